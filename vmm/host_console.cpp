#include "vmm/host_console.hpp"

#include "devices/legacy/serial.hpp"
#include "devices/virtio/console/device.hpp"
#include "vmm/base/logger.hpp"

#include <array>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdint>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>
#include <vector>

namespace ember {
namespace {

// Puts a terminal on stdin into raw-ish mode (no echo, no line editing, no signals: Ctrl-C
// belongs to the guest) and always restores it.
class TerminalGuard {
public:
    TerminalGuard() {
        if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
        termios raw = saved_;
        raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO | ISIG | IEXTEN);
        raw.c_iflag &= ~static_cast<tcflag_t>(ICRNL | IXON);
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    ~TerminalGuard() {
        if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
    TerminalGuard(const TerminalGuard&) = delete;
    TerminalGuard& operator=(const TerminalGuard&) = delete;

private:
    termios saved_{};
    bool active_ = false;
};

} // namespace

struct HostConsole::StdinReader {
    StdinReader(boost::asio::io_context& io, int fd) : sd(io, fd), saved_flags(::fcntl(STDIN_FILENO, F_GETFL)) {}
    ~StdinReader() {
        boost::system::error_code ec;
        sd.close(ec);
        // O_NONBLOCK is shared with the parent shell's file description: put it back.
        if (saved_flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, saved_flags);
    }
    boost::asio::posix::stream_descriptor sd;
    int saved_flags;
    TerminalGuard term;
    std::array<std::uint8_t, 256> buf{};
    std::vector<std::uint8_t> pending;
};

struct HostConsole::Winch {
    explicit Winch(boost::asio::io_context& io) : signals(io, SIGWINCH) {}
    boost::asio::signal_set signals;
};

HostConsole::HostConsole(boost::asio::io_context& io, Serial& serial,
                         std::shared_ptr<virtio::console::ConsoleDevice> virtio_console, bool output_on_stdout)
    : io_(io), serial_(serial), virtio_(std::move(virtio_console)), output_on_stdout_(output_on_stdout) {}

HostConsole::~HostConsole() = default;

std::optional<virtio::console::ConsoleSize> HostConsole::terminal_size() noexcept {
    winsize ws{};
    if (!::isatty(STDOUT_FILENO) || ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0) return std::nullopt;
    return virtio::console::ConsoleSize{ws.ws_col, ws.ws_row};
}

void HostConsole::start() {
    watch_terminal_size();
    int fd = ::dup(STDIN_FILENO);
    if (fd < 0) return;
    try {
        stdin_ = std::make_unique<StdinReader>(io_, fd);
    } catch (const std::exception& e) {
        // A regular file or /dev/null cannot be polled: the guest simply gets no console input.
        LOG_DEBUG("console input disabled: %s", e.what());
        return;
    }
    auto resume = [this] { boost::asio::post(io_, [this] { feed(); }); };
    if (virtio_) virtio_->set_rx_space_callback(resume);
    else serial_.set_rx_drained_callback(resume);
    read_stdin();
}

void HostConsole::read_stdin() {
    stdin_->sd.async_read_some(boost::asio::buffer(stdin_->buf), [this](const boost::system::error_code& ec, std::size_t n) {
        if (ec || n == 0) {
            if (ec != boost::asio::error::operation_aborted && ec != boost::asio::error::eof && ec)
                LOG_DEBUG("console input ended: %s", ec.message().c_str());
            return;
        }
        stdin_->pending.assign(stdin_->buf.begin(), stdin_->buf.begin() + static_cast<std::ptrdiff_t>(n));
        feed();
    });
}

void HostConsole::feed() {
    if (!stdin_ || stdin_->pending.empty()) return;
    std::size_t taken = 0;
    if (virtio_) {
        std::lock_guard lk(virtio_->mutex());
        taken = virtio_->enqueue_input(stdin_->pending);
    } else {
        taken = serial_.enqueue_input(stdin_->pending);
    }
    stdin_->pending.erase(stdin_->pending.begin(), stdin_->pending.begin() + static_cast<std::ptrdiff_t>(taken));
    // Back-pressure: with bytes left over, wait for the guest to take them before reading more.
    if (stdin_->pending.empty()) read_stdin();
}

void HostConsole::watch_terminal_size() {
    if (!virtio_ || !output_on_stdout_ || !terminal_size()) return;
    if (!winch_) winch_ = std::make_unique<Winch>(io_);
    winch_->signals.async_wait([this](const boost::system::error_code& ec, int) {
        if (ec) return;
        if (auto sz = terminal_size()) {
            std::lock_guard lk(virtio_->mutex());
            virtio_->resize(*sz);
        }
        watch_terminal_size();
    });
}

} // namespace ember
