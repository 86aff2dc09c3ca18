#include "api/run/session.hpp"

#include "api/run/run_proto.h"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdexcept>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace ember::run {
namespace {

constexpr std::size_t kStdinChunk = 65536;
// Stdin is read only while fewer than this many bytes wait to be sent (frames the agent has not
// taken yet are bounded by its window; this bounds what waits in Ember's own buffer).
constexpr std::size_t kSendHighWater = 256 * 1024;

std::string printable(const std::uint8_t* p, std::size_t n) {
    std::string s;
    s.reserve(n);
    for (std::size_t i = 0; i < n; ++i) s.push_back(p[i] >= 0x20 && p[i] < 0x7f ? static_cast<char>(p[i]) : '?');
    return s;
}

} // namespace

std::vector<std::uint8_t> encode_exec_frames(const CommandSpec& spec) {
    std::vector<const char*> argv, envp;
    for (const auto& a : spec.argv) argv.push_back(a.c_str());
    for (const auto& e : spec.env) envp.push_back(e.c_str());
    if (argv.empty() || argv.size() > ERP_MAX_ARGC) throw std::invalid_argument("the command needs 1 to 65536 arguments");
    if (envp.size() > ERP_MAX_ENVC) throw std::invalid_argument("at most 65536 environment variables");
    for (const auto& a : spec.argv)
        if (a.find('\0') != std::string::npos) throw std::invalid_argument("an argument holds a NUL byte");
    const std::uint32_t flags = spec.tty ? static_cast<std::uint32_t>(ERP_EXEC_TTY) : 0u;
    const auto argc = static_cast<std::uint32_t>(argv.size()), envc = static_cast<std::uint32_t>(envp.size());
    const std::size_t need = erp_exec_encode(nullptr, 0, flags, spec.rows, spec.cols, spec.cwd.c_str(), argv.data(), argc,
                                             envp.data(), envc);
    if (need == 0) {
        if (spec.argv[0].empty()) throw std::invalid_argument("the command name is empty");
        for (const auto& e : spec.env)
            if (e.empty() || e[0] == '=' || e.find('=') == std::string::npos)
                throw std::invalid_argument("environment entry '" + e + "' is not NAME=value");
        throw std::invalid_argument("the command, its environment and directory exceed " + std::to_string(ERP_MAX_EXEC) +
                                    " bytes");
    }
    std::vector<std::uint8_t> body(need);
    erp_exec_encode(body.data(), body.size(), flags, spec.rows, spec.cols, spec.cwd.c_str(), argv.data(), argc, envp.data(),
                    envc);
    std::vector<std::uint8_t> out;
    out.reserve(need + (need / ERP_MAX_PAYLOAD + 1) * ERP_HEADER_SIZE);
    for (std::size_t off = 0; off < need; off += ERP_MAX_PAYLOAD) {
        const std::size_t n = std::min<std::size_t>(ERP_MAX_PAYLOAD, need - off);
        const std::size_t at = out.size();
        out.resize(at + ERP_HEADER_SIZE);
        erp_encode_header(out.data() + at, ERP_T_EXEC, ERP_CH_CONTROL, off + n < need ? ERP_F_MORE : 0,
                          static_cast<std::uint32_t>(n));
        out.insert(out.end(), body.begin() + static_cast<std::ptrdiff_t>(off), body.begin() + static_cast<std::ptrdiff_t>(off + n));
    }
    return out;
}

Session::Session(std::string listen_path, CommandSpec spec, int in_fd, int out_fd, int err_fd)
    : path_(std::move(listen_path)), spec_(std::move(spec)), in_fd_(in_fd), out_fd_(out_fd), err_fd_(err_fd) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path_.size() >= sizeof a.sun_path) throw SystemError("agent socket path " + path_ + " is too long", ENAMETOOLONG);
    std::memcpy(a.sun_path, path_.c_str(), path_.size() + 1);
    listen_fd_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!listen_fd_.valid()) throw_errno("agent socket");
    if (::bind(listen_fd_.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) throw_errno("bind " + path_);
    if (::listen(listen_fd_.get(), 1) != 0) throw_errno("listen " + path_);
    wake_fd_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_fd_.valid()) throw_errno("eventfd");
    (void)encode_exec_frames(spec_); // refuse a bad command before the VM boots
}

Session::~Session() {
    stop();
    ::unlink(path_.c_str());
}

void Session::start(std::function<void()> on_end) {
    on_end_ = std::move(on_end);
    thread_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "ember_run");
        loop();
    });
}

void Session::release() noexcept {
    {
        std::lock_guard lk(mu_);
        released_ = true;
    }
    released_cv_.notify_all();
}

void Session::stop() noexcept {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    released_cv_.notify_all();
    const std::uint64_t one = 1;
    if (::write(wake_fd_.get(), &one, sizeof one) < 0) {
    }
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

Outcome Session::outcome() const {
    std::lock_guard lk(mu_);
    return outcome_;
}

void Session::post_control(const std::uint8_t* frame, std::size_t n) noexcept {
    {
        std::lock_guard lk(mu_);
        try {
            control_.insert(control_.end(), frame, frame + n);
        } catch (...) {
            return;
        }
    }
    const std::uint64_t one = 1;
    if (::write(wake_fd_.get(), &one, sizeof one) < 0) {
    }
}

bool Session::send_signal(int sig) noexcept {
    if (!connected_ || sig < 1 || sig > static_cast<int>(ERP_MAX_SIGNAL)) return false;
    std::uint8_t f[16];
    post_control(f, erp_encode_signal(f, static_cast<std::uint32_t>(sig)));
    return true;
}

void Session::send_winsize(std::uint16_t rows, std::uint16_t cols) noexcept {
    std::uint8_t f[16];
    post_control(f, erp_encode_winsize(f, rows, cols));
}

void Session::finish(Outcome o) noexcept {
    {
        std::lock_guard lk(mu_);
        if (outcome_.kind == Outcome::Kind::None) outcome_ = std::move(o);
    }
    conn_fd_ = UniqueFd();
    if (on_end_) on_end_();
}

// Writes all of a DATA payload to Ember's stdout or stderr, waiting (not spinning) when the fd
// is non-blocking and full. A reader that went away (EPIPE) makes the rest of that stream be
// dropped, as a shell pipeline would; the guest command is not stalled by it.
bool Session::write_out(int fd, const std::uint8_t* p, std::size_t n) noexcept {
    bool& broken = fd == err_fd_ ? err_broken_ : out_broken_;
    while (n > 0 && !broken) {
        const ssize_t w = ::write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= static_cast<std::size_t>(w);
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            pollfd pf[2] = {{fd, POLLOUT, 0}, {wake_fd_.get(), POLLIN, 0}};
            if (::poll(pf, 2, -1) < 0 && errno != EINTR) return false;
            if (stop_) return false;
        } else {
            broken = true;
        }
    }
    return true;
}

void Session::loop() noexcept {
    // Wait for the agent's connection.
    while (!stop_ && !conn_fd_.valid()) {
        pollfd pf[2] = {{listen_fd_.get(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
        if (::poll(pf, 2, -1) < 0 && errno != EINTR) return finish({Outcome::Kind::Failed, 0, "poll failed"});
        if (pf[0].revents & POLLIN) {
            const int c = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (c >= 0) conn_fd_ = UniqueFd(c);
        }
    }
    if (stop_) return;
    listen_fd_ = UniqueFd();
    connected_ = true;
    LOG_INFO("ember run: agent connected");

    std::vector<std::uint8_t> in(ERP_MAX_FRAME);
    std::size_t inlen = 0;
    std::vector<std::uint8_t> send;
    std::size_t sendoff = 0;
    bool ready = false, stdin_done = !spec_.interactive;
    std::uint32_t window = 0, outstanding = 0;
    std::vector<std::uint8_t> exec = encode_exec_frames(spec_);

    while (!stop_) {
        {
            std::lock_guard lk(mu_);
            if (ready && !control_.empty()) {
                send.insert(send.end(), control_.begin(), control_.end());
                control_.clear();
            }
        }
        const bool want_stdin = ready && !stdin_done && outstanding < window && send.size() - sendoff < kSendHighWater;
        pollfd pf[3] = {{conn_fd_.get(), static_cast<short>(POLLIN | (send.size() > sendoff ? POLLOUT : 0)), 0},
                        {wake_fd_.get(), POLLIN, 0},
                        {want_stdin ? in_fd_ : -1, POLLIN, 0}};
        if (::poll(pf, 3, -1) < 0) {
            if (errno == EINTR) continue;
            return finish({Outcome::Kind::Failed, 0, "poll failed"});
        }
        if (pf[1].revents & POLLIN) {
            std::uint64_t v;
            if (::read(wake_fd_.get(), &v, sizeof v) < 0) {
            }
        }
        if (pf[2].revents) {
            const std::size_t room = std::min<std::size_t>(kStdinChunk, window - outstanding);
            const std::size_t at = send.size();
            send.resize(at + ERP_HEADER_SIZE + room);
            const ssize_t r = ::read(in_fd_, send.data() + at + ERP_HEADER_SIZE, room);
            if (r > 0) {
                erp_encode_header(send.data() + at, ERP_T_DATA, ERP_CH_STDIN, 0, static_cast<std::uint32_t>(r));
                send.resize(at + ERP_HEADER_SIZE + static_cast<std::size_t>(r));
                outstanding += static_cast<std::uint32_t>(r);
            } else {
                send.resize(at);
                if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
                    std::uint8_t f[16];
                    send.insert(send.end(), f, f + erp_encode_eof(f));
                    stdin_done = true;
                }
            }
        }
        if (pf[0].revents & POLLOUT) {
            const ssize_t w = ::send(conn_fd_.get(), send.data() + sendoff, send.size() - sendoff, MSG_NOSIGNAL);
            if (w > 0) sendoff += static_cast<std::size_t>(w);
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                return finish({Outcome::Kind::Failed, 0, std::string("the agent's stream failed: ") + std::strerror(errno)});
            if (sendoff == send.size()) {
                send.clear();
                sendoff = 0;
            }
        }
        if (!(pf[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        const ssize_t r = ::recv(conn_fd_.get(), in.data() + inlen, in.size() - inlen, 0);
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
            return finish({Outcome::Kind::Failed, 0, "the guest agent's stream ended before the command's exit status"});
        if (r < 0) continue;
        inlen += static_cast<std::size_t>(r);
        std::size_t off = 0;
        for (;;) {
            erp_frame f{};
            std::size_t used = 0;
            const int rc = erp_decode(in.data() + off, inlen - off, ERP_TO_HOST, &f, &used);
            if (rc == ERP_NEED_MORE) break;
            if (rc < 0)
                return finish({Outcome::Kind::Failed, 0, std::string("protocol error from the guest agent: ") + erp_error_name(rc)});
            off += used;
            switch (f.type) {
            case ERP_T_READY:
                if (ready) return finish({Outcome::Kind::Failed, 0, "protocol error from the guest agent: a second READY"});
                ready = true;
                window = erp_get_u32(f.payload + 4);
                LOG_INFO("ember run: agent ready");
                if (on_ready_) {
                    on_ready_();
                    std::unique_lock lk(mu_);
                    released_cv_.wait(lk, [this] { return released_ || stop_; });
                    if (stop_) return;
                }
                send.insert(send.end(), exec.begin(), exec.end());
                exec = {};
                if (stdin_done) {
                    std::uint8_t e[16];
                    send.insert(send.end(), e, e + erp_encode_eof(e));
                }
                break;
            case ERP_T_DATA:
                if (!ready) return finish({Outcome::Kind::Failed, 0, "protocol error from the guest agent: output before READY"});
                if (!write_out(f.channel == ERP_CH_STDERR ? err_fd_ : out_fd_, f.payload, f.length)) return;
                break;
            case ERP_T_CREDIT: {
                const std::uint32_t n = erp_get_u32(f.payload);
                if (n > outstanding) return finish({Outcome::Kind::Failed, 0, "protocol error from the guest agent: credit for stdin never sent"});
                outstanding -= n;
                break;
            }
            case ERP_T_EXIT: {
                LOG_INFO("ember run: command exited");
                const std::uint32_t kind = erp_get_u32(f.payload), value = erp_get_u32(f.payload + 4);
                Outcome o;
                o.kind = kind == ERP_EXIT_CODE ? Outcome::Kind::Exited
                         : kind == ERP_EXIT_SIGNAL ? Outcome::Kind::Signalled
                                                   : Outcome::Kind::StartFailed;
                o.value = value;
                o.text = printable(f.payload + 8, f.length - 8);
                return finish(std::move(o));
            }
            default:
                return finish({Outcome::Kind::Failed, 0, "protocol error from the guest agent: unexpected frame"});
            }
        }
        if (off > 0) {
            std::memmove(in.data(), in.data() + off, inlen - off);
            inlen -= off;
        }
    }
}

} // namespace ember::run
