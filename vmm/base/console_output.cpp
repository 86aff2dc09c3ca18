#include "vmm/base/console_output.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/output_file.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember {
namespace {

// Whether epoll can watch `fd`; regular files and some character devices (/dev/null) cannot,
// and writes to them complete without waiting for a reader.
bool pollable(int fd) noexcept {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) return false;
    UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep.valid()) return false;
    epoll_event ev{};
    ev.events = EPOLLOUT;
    return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
}

} // namespace

ConsoleOutput::ConsoleOutput(boost::asio::io_context& io, UniqueFd fd, std::size_t capacity)
    : io_(io), fd_(std::move(fd)), capacity_(capacity) {
    if (!pollable(fd_.get())) return;
    saved_flags_ = ::fcntl(fd_.get(), F_GETFL);
    if (saved_flags_ < 0 || ::fcntl(fd_.get(), F_SETFL, saved_flags_ | O_NONBLOCK) != 0)
        throw SystemError("console output: cannot make the descriptor non-blocking", errno);
    sd_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd_.get());
}

ConsoleOutput::~ConsoleOutput() {
    *alive_ = false;
    alive_.reset();
    if (sd_) {
        // The descriptor is shared with the parent (stdout): put its blocking mode back, and let
        // fd_ close our duplicate rather than Asio.
        boost::system::error_code ec;
        sd_->cancel(ec);
        (void)sd_->release();
        if (saved_flags_ >= 0) ::fcntl(fd_.get(), F_SETFL, saved_flags_);
    }
}

UniqueFd ConsoleOutput::dup_stdout() {
    const int fd = ::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    if (fd < 0) throw SystemError("console output: cannot duplicate stdout", errno);
    return UniqueFd(fd);
}

UniqueFd ConsoleOutput::open_path(const std::string& path) {
    if (path.empty()) throw ConfigError("serial_out_path must not be empty");
    UniqueFd owned = open_output(path, 0600);
    if (!owned.valid()) throw ConfigError("serial_out_path " + path + ": " + std::strerror(errno));
    const int fd = owned.get();
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw ConfigError("serial_out_path " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode))
        throw ConfigError("serial_out_path " + path + " is neither a file, a named pipe nor a character device");
    // The constructor decides blocking mode from what the descriptor is; start from blocking.
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
        throw ConfigError("serial_out_path " + path + ": " + std::strerror(errno));
    return owned;
}

std::size_t ConsoleOutput::buffered() const noexcept {
    std::lock_guard lk(mu_);
    return buf_.size() - head_;
}

std::size_t ConsoleOutput::write(std::span<const std::uint8_t> bytes) noexcept {
    std::lock_guard lk(mu_);
    std::size_t done = 0;
    if (head_ == buf_.size()) {
        // Nothing queued, so order allows writing straight through.
        while (done < bytes.size()) {
            const ssize_t n = ::write(fd_.get(), bytes.data() + done, bytes.size() - done);
            if (n > 0) {
                done += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && sd_) break;
            // The reader is gone or the file cannot grow: this output is lost.
            OutputMetrics& m = metrics_;
            m.write_fails.fetch_add(1, std::memory_order_relaxed);
            m.bytes_dropped.fetch_add(bytes.size() - done, std::memory_order_relaxed);
            m.bytes_written.fetch_add(done, std::memory_order_relaxed);
            return done;
        }
        metrics_.bytes_written.fetch_add(done, std::memory_order_relaxed);
        if (done == bytes.size()) return done;
    }
    const std::size_t pending = buf_.size() - head_;
    const std::size_t take = std::min(bytes.size() - done, capacity_ - std::min(capacity_, pending));
    if (take < bytes.size() - done) metrics_.bytes_dropped.fetch_add(bytes.size() - done - take, std::memory_order_relaxed);
    if (take > 0) {
        if (head_ > 0 && head_ >= buf_.size() / 2) {
            buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(head_));
            head_ = 0;
        }
        try {
            buf_.insert(buf_.end(), bytes.begin() + static_cast<std::ptrdiff_t>(done),
                        bytes.begin() + static_cast<std::ptrdiff_t>(done + take));
        } catch (...) {
            metrics_.bytes_dropped.fetch_add(take, std::memory_order_relaxed);
            return done;
        }
    }
    if (!armed_ && head_ != buf_.size()) {
        armed_ = true;
        try {
            boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
                if (!alive.expired()) arm();
            });
        } catch (...) {
            armed_ = false; // retried by the next write
        }
    }
    return done + take;
}

void ConsoleOutput::flush_locked() noexcept {
    while (head_ < buf_.size()) {
        const ssize_t n = ::write(fd_.get(), buf_.data() + head_, buf_.size() - head_);
        if (n > 0) {
            head_ += static_cast<std::size_t>(n);
            metrics_.bytes_written.fetch_add(static_cast<std::size_t>(n), std::memory_order_relaxed);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        metrics_.write_fails.fetch_add(1, std::memory_order_relaxed);
        metrics_.bytes_dropped.fetch_add(buf_.size() - head_, std::memory_order_relaxed);
        head_ = buf_.size();
    }
    buf_.clear();
    head_ = 0;
}

// On the event loop only (the stream_descriptor is not thread-safe).
void ConsoleOutput::arm() noexcept {
    sd_->async_wait(boost::asio::posix::stream_descriptor::wait_write,
                    [this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
                        if (alive.expired()) return;
                        std::unique_lock lk(mu_);
                        if (!ec) flush_locked();
                        if (ec || head_ == buf_.size()) {
                            armed_ = false;
                            return;
                        }
                        lk.unlock();
                        arm();
                    });
}

void ConsoleOutput::drain(std::chrono::milliseconds budget) noexcept {
    const auto end = std::chrono::steady_clock::now() + budget;
    std::lock_guard lk(mu_);
    for (;;) {
        flush_locked();
        if (head_ == buf_.size()) return;
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
        if (left <= 0) return;
        pollfd p{fd_.get(), POLLOUT, 0};
        if (::poll(&p, 1, static_cast<int>(left)) < 0 && errno != EINTR) return;
    }
}

} // namespace ember
