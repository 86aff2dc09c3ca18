#include "devices/virtio/vsock/backend.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace ember::virtio::vsock {

namespace {

using boost::asio::posix::stream_descriptor;

// Longest "CONNECT <port>\n" line accepted (Firecracker reads at most 32 bytes too).
constexpr std::size_t MAX_CONNECT_LINE = 32;

bool fill_sockaddr(const std::string& path, sockaddr_un& sa, socklen_t& len) noexcept {
    std::memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof sa.sun_path) return false;
    std::memcpy(sa.sun_path, path.data(), path.size());
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return true;
}

// Parses "CONNECT <port>" (the newline already stripped); decimal, no sign, fits u32.
bool parse_connect(const std::string& line, std::uint32_t& port) noexcept {
    static constexpr char kPrefix[] = "CONNECT ";
    constexpr std::size_t plen = sizeof kPrefix - 1;
    if (line.size() <= plen || line.compare(0, plen, kPrefix) != 0) return false;
    const char* b = line.data() + plen;
    const char* e = line.data() + line.size();
    if (*b < '0' || *b > '9') return false;
    const auto r = std::from_chars(b, e, port);
    return r.ec == std::errc() && r.ptr == e;
}

std::size_t iov_total(std::span<const iovec> iov) noexcept {
    std::size_t n = 0;
    for (const auto& v : iov) n += v.iov_len;
    return n;
}

// Sockets bound by PUT /vsock before the device exists, by path.
std::mutex parked_mu;
std::map<std::string, UniqueFd>& parked() {
    static std::map<std::string, UniqueFd> m;
    return m;
}

} // namespace

UniqueFd bind_uds(const std::string& path) {
    sockaddr_un sa;
    socklen_t len = 0;
    if (!fill_sockaddr(path, sa, len)) throw ConfigError("vsock: uds_path '" + path + "' is empty or too long for a unix socket");
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd.valid()) throw SystemError("vsock: socket for " + path, errno);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len) != 0) throw SystemError("vsock: cannot bind uds_path " + path, errno);
    if (::listen(fd.get(), 128) != 0) {
        const int err = errno;
        ::unlink(path.c_str());
        throw SystemError("vsock: listen " + path, err);
    }
    return fd;
}

void park_listener(const std::string& path, UniqueFd fd) {
    std::lock_guard lk(parked_mu);
    parked()[path] = std::move(fd);
}

UniqueFd take_parked_listener(const std::string& path) noexcept {
    std::lock_guard lk(parked_mu);
    auto it = parked().find(path);
    if (it == parked().end()) return UniqueFd();
    UniqueFd fd = std::move(it->second);
    parked().erase(it);
    return fd;
}

int Muxer::Conn::fd() const { return sd ? sd->native_handle() : -1; }

Muxer::Muxer(boost::asio::io_context& io, std::mutex& mu, std::uint64_t guest_cid, std::string uds_path, VsockMetrics& metrics,
             std::function<void()> kick)
    : io_(io), mu_(mu), guest_cid_(guest_cid), uds_path_(std::move(uds_path)), metrics_(metrics), kick_(std::move(kick)),
      expiry_timer_(io) {}

Muxer::~Muxer() {
    *alive_ = false;
    expiry_timer_.cancel();
    boost::system::error_code ec;
    for (auto& [k, c] : conns_)
        if (c.sd) c.sd->close(ec);
    if (listener_) {
        listener_->close(ec);
        ::unlink(uds_path_.c_str());
    }
}

void Muxer::listen() {
    UniqueFd fd = take_parked_listener(uds_path_);
    if (!fd.valid()) fd = bind_uds(uds_path_);
    listener_ = std::make_unique<stream_descriptor>(io_, fd.release());
}

void Muxer::start() {
    running_ = true;
    arm_accept();
}

void Muxer::reset() noexcept {
    running_ = false;
    expiry_timer_.cancel();
    expiry_armed_.reset();
    boost::system::error_code ec;
    for (auto& [k, c] : conns_)
        if (c.sd) c.sd->close(ec);
    metrics_.conns_removed.fetch_add(conns_.size(), std::memory_order_relaxed);
    conns_.clear();
    pending_.clear();
    stray_.clear();
}

void Muxer::arm_accept() noexcept {
    if (!listener_ || accept_armed_) return;
    accept_armed_ = true;
    listener_->async_wait(stream_descriptor::wait_read, [this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (ec || alive.expired()) return;
        std::lock_guard lk(mu_);
        accept_armed_ = false;
        on_accept();
    });
}

void Muxer::on_accept() noexcept {
    for (;;) {
        const int fd = ::accept4(listener_->native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) metrics_.muxer_event_fails.fetch_add(1, std::memory_order_relaxed);
            break;
        }
        if (!running_ || conns_.size() >= MAX_CONNECTIONS) {
            ::close(fd); // the host sees the connection closed
            continue;
        }
        // Until the CONNECT line names the guest port, the connection is keyed by its local
        // port alone (peer port 0 is never a live key: it is replaced before REQUEST goes out).
        const std::uint32_t local = alloc_local_port();
        const Key k = key(local, 0);
        Conn& c = conns_[k];
        c.id = next_id_++;
        c.local_port = local;
        c.state = ConnState::AwaitConnectLine;
        c.sd = std::make_unique<stream_descriptor>(io_, fd);
        arm_read(c);
    }
    if (running_) arm_accept();
}

std::uint32_t Muxer::alloc_local_port() noexcept {
    // Ports of live connections are skipped; with at most MAX_CONNECTIONS alive, a free one is
    // found within MAX_CONNECTIONS + 1 tries.
    for (;;) {
        const std::uint32_t p = next_local_port_++;
        if (next_local_port_ == 0) next_local_port_ = FIRST_LOCAL_PORT;
        auto it = conns_.lower_bound(key(p, 0));
        if (it == conns_.end() || (it->first >> 32) != p) return p;
    }
}

void Muxer::arm_read(Conn& c) noexcept {
    if (c.read_armed || !c.sd) return;
    c.read_armed = true;
    const Key k = key(c.local_port, c.peer_port);
    c.sd->async_wait(stream_descriptor::wait_read, [this, k, id = c.id, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (ec || alive.expired()) return;
        std::lock_guard lk(mu_);
        on_readable(k, id);
    });
}

void Muxer::arm_write(Conn& c) noexcept {
    if (c.write_armed || !c.sd) return;
    c.write_armed = true;
    const Key k = key(c.local_port, c.peer_port);
    c.sd->async_wait(stream_descriptor::wait_write, [this, k, id = c.id, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (ec || alive.expired()) return;
        std::lock_guard lk(mu_);
        on_writable(k, id);
    });
}

void Muxer::on_readable(Key k, std::uint64_t id) noexcept {
    auto it = conns_.find(k);
    if (it == conns_.end() || it->second.id != id) return;
    Conn& c = it->second;
    c.read_armed = false;
    if (c.dead) return;
    if (c.state == ConnState::AwaitConnectLine) {
        read_connect_line(k, c);
        return;
    }
    queue(k, c, P_DATA);
    if (kick_) kick_();
}

void Muxer::on_writable(Key k, std::uint64_t id) noexcept {
    auto it = conns_.find(k);
    if (it == conns_.end() || it->second.id != id) return;
    Conn& c = it->second;
    c.write_armed = false;
    if (c.dead) return;
    flush_out(c);
    if (c.dead) return;
    maybe_finish(k, c);
    if (kick_) kick_();
}

void Muxer::read_connect_line(Key k, Conn& c) noexcept {
    // One byte at a time: bytes after the newline belong to the stream, not to us.
    for (;;) {
        char ch = 0;
        const ssize_t n = ::read(c.fd(), &ch, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            arm_read(c);
            return;
        }
        if (n <= 0) break; // error or EOF before the line: drop the connection
        if (ch == '\n') {
            std::uint32_t port = 0;
            if (!parse_connect(c.line, port)) break;
            // Re-key under the guest port, now known.
            Conn moved = std::move(c);
            conns_.erase(k);
            moved.peer_port = port;
            moved.state = ConnState::LocalInit;
            moved.line.clear();
            moved.credit.buf_alloc = CONN_BUF_ALLOC;
            const Key nk = key(moved.local_port, port);
            auto [it, fresh] = conns_.emplace(nk, std::move(moved));
            (void)fresh; // local ports are unique among live connections
            metrics_.conns_added.fetch_add(1, std::memory_order_relaxed);
            queue(nk, it->second, P_REQUEST);
            if (kick_) kick_();
            return;
        }
        c.line.push_back(ch);
        if (c.line.size() > MAX_CONNECT_LINE) break;
    }
    remove(k);
}

void Muxer::queue(Key k, Conn& c, unsigned what) noexcept {
    c.pending |= what;
    if (!c.queued) {
        c.queued = true;
        pending_.push_back(k);
    }
}

Header Muxer::base_header(const Conn& c, Op op) noexcept {
    Header h;
    h.src_cid = HOST_CID;
    h.dst_cid = guest_cid_;
    h.src_port = c.local_port;
    h.dst_port = c.peer_port;
    h.type = TYPE_STREAM;
    h.op = static_cast<std::uint16_t>(op);
    h.buf_alloc = c.credit.buf_alloc;
    h.fwd_cnt = c.credit.fwd_cnt;
    return h;
}

void Muxer::stray_rst(const Header& g) noexcept {
    if (g.op == static_cast<std::uint16_t>(Op::Rst)) return; // never answer RST with RST
    if (stray_.size() >= MAX_STRAY_RST) return;
    Header h;
    h.src_cid = HOST_CID;
    h.dst_cid = guest_cid_;
    h.src_port = g.dst_port;
    h.dst_port = g.src_port;
    h.type = TYPE_STREAM;
    h.op = static_cast<std::uint16_t>(Op::Rst);
    stray_.push_back(h);
}

void Muxer::kill(Key k, Conn& c) noexcept {
    boost::system::error_code ec;
    if (c.sd) c.sd->close(ec);
    c.sd.reset();
    c.out.clear();
    c.out_off = 0;
    c.dead = true;
    c.pending = 0;
    metrics_.conns_killed.fetch_add(1, std::memory_order_relaxed);
    queue(k, c, P_RST);
}

void Muxer::remove(Key k) noexcept {
    auto it = conns_.find(k);
    if (it == conns_.end()) return;
    boost::system::error_code ec;
    if (it->second.sd) it->second.sd->close(ec);
    conns_.erase(it);
    metrics_.conns_removed.fetch_add(1, std::memory_order_relaxed);
    // A stale key left in pending_ is skipped by next_rx().
}

void Muxer::guest_request(const Header& h) noexcept {
    if (conns_.size() >= MAX_CONNECTIONS) return stray_rst(h);
    const std::string path = uds_path_ + "_" + std::to_string(h.dst_port);
    sockaddr_un sa;
    socklen_t len = 0;
    if (!fill_sockaddr(path, sa, len)) return stray_rst(h);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    // A unix stream connect completes or fails at once; EAGAIN (listener backlog full) is a
    // refusal too.
    if (!fd.valid() || ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), len) != 0) {
        LOG_DEBUG("vsock: guest connect to %s refused: %s", path.c_str(), std::strerror(errno));
        return stray_rst(h);
    }
    const Key k = key(h.dst_port, h.src_port);
    Conn& c = conns_[k];
    c.id = next_id_++;
    c.local_port = h.dst_port;
    c.peer_port = h.src_port;
    c.state = ConnState::Established;
    c.credit.buf_alloc = CONN_BUF_ALLOC;
    c.credit.update_peer(h);
    c.sd = std::make_unique<stream_descriptor>(io_, fd.release());
    metrics_.conns_added.fetch_add(1, std::memory_order_relaxed);
    queue(k, c, P_RESPONSE);
    if (c.credit.peer_free() > 0) arm_read(c);
}

void Muxer::send(const Header& h, std::span<const iovec> payload) noexcept {
    if (!running_) return;
    // Packets not from our guest to the host are dropped (Firecracker does the same).
    if (h.src_cid != guest_cid_ || h.dst_cid != HOST_CID) return;
    const Key k = key(h.dst_port, h.src_port);
    auto it = conns_.find(k);
    // Only stream sockets exist (§5.10.6): another type resets its connection, if there is one.
    if (h.type != TYPE_STREAM) {
        if (it != conns_.end() && !it->second.dead) return kill(k, it->second);
        return stray_rst(h);
    }
    const Op op = static_cast<Op>(h.op);
    if (it == conns_.end()) {
        if (op == Op::Request) return guest_request(h);
        return stray_rst(h);
    }
    Conn& c = it->second;
    if (c.dead) return; // RST already owed
    c.credit.update_peer(h);
    switch (op) {
    case Op::Response:
        if (c.state != ConnState::LocalInit) return kill(k, c);
        {
            c.state = ConnState::Established;
            c.expiry.reset();
            const std::string ok = "OK " + std::to_string(c.local_port) + "\n";
            // A fresh socket's send buffer takes a few bytes; anything else ends the connection.
            const ssize_t n = ::send(c.fd(), ok.data(), ok.size(), MSG_NOSIGNAL);
            if (n != static_cast<ssize_t>(ok.size())) return kill(k, c);
            if (c.credit.peer_free() > 0) arm_read(c);
        }
        return;
    case Op::Rst:
        remove(k);
        return;
    case Op::Rw: {
        if (c.state != ConnState::Established || c.peer_shut_send) return kill(k, c);
        const std::size_t n = iov_total(payload);
        if (n != h.len || !c.credit.may_receive(h.len)) return kill(k, c);
        for (const auto& v : payload) {
            const auto* p = static_cast<const std::byte*>(v.iov_base);
            c.out.insert(c.out.end(), p, p + v.iov_len);
        }
        c.credit.rx_cnt += h.len;
        metrics_.tx_bytes_count.fetch_add(n, std::memory_order_relaxed);
        flush_out(c);
        if (!c.dead) maybe_finish(k, c);
        break;
    }
    case Op::CreditUpdate: break;
    case Op::CreditRequest: queue(k, c, P_CREDIT_UPDATE); break;
    case Op::Shutdown:
        if (c.state != ConnState::Established) return kill(k, c);
        if (h.flags & SHUTDOWN_RCV) c.peer_shut_rcv = true;
        if (h.flags & SHUTDOWN_SEND) c.peer_shut_send = true;
        maybe_finish(k, c);
        break;
    case Op::Request: return kill(k, c); // a second REQUEST on a live connection
    default: return kill(k, c);
    }
    if (c.dead) return;
    // New credit from the guest may let us read the host socket again.
    if (c.state == ConnState::Established && !c.host_eof && !c.peer_shut_rcv && c.credit.peer_free() > 0) arm_read(c);
}

void Muxer::flush_out(Conn& c) noexcept {
    while (c.out_off < c.out.size()) {
        const ssize_t n = ::send(c.fd(), c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                arm_write(c);
                break;
            }
            metrics_.tx_write_fails.fetch_add(1, std::memory_order_relaxed);
            return kill(key(c.local_port, c.peer_port), c);
        }
        c.out_off += static_cast<std::size_t>(n);
        c.credit.fwd_cnt += static_cast<std::uint32_t>(n);
    }
    if (c.out_off == c.out.size()) {
        c.out.clear();
        c.out_off = 0;
    } else if (c.out_off >= c.out.size() / 2) {
        c.out.erase(c.out.begin(), c.out.begin() + static_cast<std::ptrdiff_t>(c.out_off));
        c.out_off = 0;
    }
    if (c.credit.update_due(CREDIT_UPDATE_THRESHOLD)) queue(key(c.local_port, c.peer_port), c, P_CREDIT_UPDATE);
}

void Muxer::maybe_finish(Key k, Conn& c) noexcept {
    // The guest will send no more and everything it sent reached the host: half-close the host
    // socket; if the guest will not receive either, or the host already hit EOF, the connection
    // is over: RST tells the guest (Linux waits for it after close(), virtio_transport_close).
    if (!c.peer_shut_send || c.out_off < c.out.size()) return;
    if (c.peer_shut_rcv || c.host_eof) return kill(k, c);
    if (c.sd) ::shutdown(c.fd(), SHUT_WR);
}

void Muxer::arm_expiry(std::chrono::steady_clock::time_point when) noexcept {
    if (expiry_armed_ && *expiry_armed_ <= when) return;
    expiry_armed_ = when;
    expiry_timer_.expires_at(when);
    expiry_timer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
        if (ec || alive.expired()) return;
        std::lock_guard lk(mu_);
        on_expiry();
    });
}

void Muxer::on_expiry() noexcept {
    expiry_armed_.reset();
    if (!running_) return;
    const auto now = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> next;
    bool killed = false;
    for (auto& [k, c] : conns_) {
        if (c.dead || c.state != ConnState::LocalInit || !c.expiry) continue;
        if (*c.expiry <= now) {
            LOG_DEBUG("vsock: guest port %u did not answer CONNECT within %lld ms", c.peer_port,
                      static_cast<long long>(CONN_REQUEST_TIMEOUT.count()));
            c.expiry.reset();
            kill(k, c);
            killed = true;
        } else if (!next || *c.expiry < *next) {
            next = c.expiry;
        }
    }
    if (next) arm_expiry(*next);
    if (killed && kick_) kick_();
}

bool Muxer::next_rx(Header& hdr, std::span<std::byte> buf, std::uint32_t& len) noexcept {
    len = 0;
    if (!stray_.empty()) {
        hdr = stray_.front();
        stray_.pop_front();
        return true;
    }
    while (!pending_.empty()) {
        const Key k = pending_.front();
        auto it = conns_.find(k);
        if (it == conns_.end()) {
            pending_.pop_front();
            continue;
        }
        Conn& c = it->second;
        auto done_with = [&](unsigned bit) {
            c.pending &= ~bit;
            if (c.pending == 0) {
                c.queued = false;
                pending_.pop_front();
            }
        };
        if (c.pending & P_RST) {
            hdr = base_header(c, Op::Rst);
            pending_.pop_front();
            conns_.erase(it);
            metrics_.conns_removed.fetch_add(1, std::memory_order_relaxed);
            return true;
        }
        if (c.pending & P_REQUEST) {
            hdr = base_header(c, Op::Request);
            c.expiry = std::chrono::steady_clock::now() + CONN_REQUEST_TIMEOUT;
            arm_expiry(*c.expiry);
            c.credit.last_fwd_sent = c.credit.fwd_cnt;
            done_with(P_REQUEST);
            return true;
        }
        if (c.pending & P_RESPONSE) {
            hdr = base_header(c, Op::Response);
            c.credit.last_fwd_sent = c.credit.fwd_cnt;
            done_with(P_RESPONSE);
            return true;
        }
        if (c.pending & P_DATA) {
            const std::uint32_t room = std::min<std::uint32_t>(static_cast<std::uint32_t>(std::min<std::size_t>(buf.size(), MAX_PAYLOAD)),
                                                               c.credit.peer_free());
            if (c.state != ConnState::Established || c.host_eof || c.peer_shut_rcv || room == 0) {
                // No credit: the read waits for the guest's CREDIT_UPDATE (send() re-arms).
                done_with(P_DATA);
                continue;
            }
            const ssize_t n = ::recv(c.fd(), buf.data(), room, MSG_DONTWAIT);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) {
                done_with(P_DATA);
                arm_read(c);
                continue;
            }
            if (n < 0) {
                metrics_.rx_read_fails.fetch_add(1, std::memory_order_relaxed);
                done_with(P_DATA);
                kill(k, c);
                continue;
            }
            if (n == 0) {
                // The host will send no more: SHUTDOWN(SEND), or the end if the guest is done too.
                c.host_eof = true;
                done_with(P_DATA);
                if (c.peer_shut_send && c.out_off == c.out.size()) {
                    kill(k, c);
                    continue;
                }
                hdr = base_header(c, Op::Shutdown);
                hdr.flags = SHUTDOWN_SEND;
                c.credit.last_fwd_sent = c.credit.fwd_cnt;
                return true;
            }
            len = static_cast<std::uint32_t>(n);
            hdr = base_header(c, Op::Rw);
            c.credit.tx_cnt += len;
            c.credit.last_fwd_sent = c.credit.fwd_cnt;
            metrics_.rx_bytes_count.fetch_add(len, std::memory_order_relaxed);
            // Stay queued, behind the others: there may be more to read (the next call finds
            // EAGAIN if not), and every connection gets its turn.
            pending_.pop_front();
            pending_.push_back(k);
            return true;
        }
        if (c.pending & P_CREDIT_UPDATE) {
            hdr = base_header(c, Op::CreditUpdate);
            c.credit.last_fwd_sent = c.credit.fwd_cnt;
            done_with(P_CREDIT_UPDATE);
            return true;
        }
        // Nothing left (bits cleared elsewhere).
        c.queued = false;
        pending_.pop_front();
    }
    return false;
}

} // namespace ember::virtio::vsock
