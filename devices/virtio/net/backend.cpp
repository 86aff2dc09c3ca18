#include "devices/virtio/net/backend.hpp"

#include "devices/virtio/net/request.hpp"

#include "vmm/base/error.hpp"

#include <cerrno>
#include <climits>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

namespace ember::virtio::net {

Tap::Tap(const std::string& name, int vnet_hdr_len) : name_(name) {
    const std::string what = "TAP " + name;
    if (name.empty() || name.size() >= IFNAMSIZ) throw ConfigError(what + ": the name must be 1-15 characters");
    const int fd = ::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw ConfigError(what + ": cannot open /dev/net/tun: " + std::strerror(errno));
    fd_.reset(fd);
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, name.c_str(), name.size());
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // TUNSETIFF on a name that does not exist would create a TAP; Ember must not create host
    // interfaces, so check first.
    if (::if_nametoindex(name.c_str()) == 0) throw ConfigError(what + ": no such TAP device (create it first, e.g. ip tuntap add)");
    if (::ioctl(fd, TUNSETIFF, &ifr) != 0) {
        const int e = errno;
        if (e == EBUSY) throw ConfigError(what + ": the TAP device is busy (another process has it open)");
        if (e == EINVAL) throw ConfigError(what + ": not a TAP device with vnet headers");
        throw ConfigError(what + ": TUNSETIFF: " + std::strerror(e));
    }
    if (::ioctl(fd, TUNSETVNETHDRSZ, &vnet_hdr_len) != 0) throw ConfigError(what + ": TUNSETVNETHDRSZ: " + std::strerror(errno));
    if (!set_offload(0)) throw ConfigError(what + ": TUNSETOFFLOAD: " + std::strerror(errno));
}

std::unique_ptr<Tap> open_tap(const NetConfig& cfg) {
    try {
        if (cfg.passt_socket) {
            const int fd = ::fcntl(cfg.passt_socket->get(), F_DUPFD_CLOEXEC, 0);
            if (fd < 0) throw ConfigError(std::string("passt socket: ") + std::strerror(errno));
            return Tap::adopt_stream(UniqueFd(fd), cfg.host_dev_name);
        }
        return std::make_unique<Tap>(cfg.host_dev_name, static_cast<int>(VNET_HDR_LEN));
    } catch (const ConfigError& e) {
        throw ConfigError("network interface " + cfg.iface_id + ": " + e.what());
    }
}

std::unique_ptr<Tap> Tap::adopt(UniqueFd fd, std::string name) {
    std::unique_ptr<Tap> t(new Tap());
    t->fd_ = std::move(fd);
    t->name_ = std::move(name);
    return t;
}

namespace {
// QEMU's stream netdev record header: the frame's length, big-endian (net/stream.c).
constexpr std::size_t kLenBytes = 4;
// Room for one largest frame and its length, plus as much again so that a read seldom ends
// mid-record.
constexpr std::size_t kInBytes = 2 * (kLenBytes + MAX_FRAME_WITH_HDR - VNET_HDR_LEN);
} // namespace

std::unique_ptr<Tap> Tap::adopt_stream(UniqueFd fd, std::string name) {
    const int fl = ::fcntl(fd.get(), F_GETFL);
    if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl | O_NONBLOCK) != 0) throw SystemError("network link " + name + ": O_NONBLOCK", errno);
    std::unique_ptr<Tap> t(new Tap());
    t->fd_ = std::move(fd);
    t->name_ = std::move(name);
    t->stream_ = true;
    t->iov_.reserve(IOV_MAX);
    t->in_.reset(new std::byte[kInBytes]);
    t->out_.reserve(kLenBytes + MAX_FRAME_WITH_HDR);
    return t;
}

bool Tap::set_offload(unsigned flags) noexcept {
    if (stream_) return flags == 0;
    if (::ioctl(fd_.get(), TUNSETOFFLOAD, flags) == 0) return true;
    return flags == 0 && errno == ENOTTY; // not a TAP: no offloads to turn off
}

ssize_t Tap::read_frame(std::span<std::byte> buf) noexcept {
    if (!stream_) return ::read(fd_.get(), buf.data(), buf.size());
    if (broken_) {
        errno = EPROTO;
        return -1;
    }
    for (;;) {
        const std::size_t have = in_end_ - in_pos_;
        if (have >= kLenBytes) {
            const auto* p = reinterpret_cast<const unsigned char*>(in_.get() + in_pos_);
            const std::size_t len = std::size_t{p[0]} << 24 | std::size_t{p[1]} << 16 | std::size_t{p[2]} << 8 | p[3];
            // A frame must hold an Ethernet header and fit the caller's buffer with its header.
            if (len < 14 || len > buf.size() - VNET_HDR_LEN || len > MAX_FRAME_WITH_HDR - VNET_HDR_LEN) {
                broken_ = true;
                ::shutdown(fd_.get(), SHUT_RDWR);
                errno = EPROTO;
                return -1;
            }
            if (have >= kLenBytes + len) {
                std::memset(buf.data(), 0, VNET_HDR_LEN);
                std::memcpy(buf.data() + VNET_HDR_LEN, in_.get() + in_pos_ + kLenBytes, len);
                in_pos_ += kLenBytes + len;
                if (in_pos_ == in_end_) in_pos_ = in_end_ = 0;
                return static_cast<ssize_t>(VNET_HDR_LEN + len);
            }
        }
        if (in_pos_ > 0) {
            std::memmove(in_.get(), in_.get() + in_pos_, have);
            in_pos_ = 0;
            in_end_ = have;
        }
        const ssize_t n = ::read(fd_.get(), in_.get() + in_end_, kInBytes - in_end_);
        if (n == 0) {
            errno = EPIPE;
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        in_end_ += static_cast<std::size_t>(n);
    }
}

bool Tap::flush() noexcept {
    while (out_pos_ < out_.size()) {
        const ssize_t n = ::send(fd_.get(), out_.data() + out_pos_, out_.size() - out_pos_, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return false;
            out_.clear(); // the link is gone: what is left can never arrive
            out_pos_ = 0;
            return true;
        }
        out_pos_ += static_cast<std::size_t>(n);
    }
    out_.clear();
    out_pos_ = 0;
    return true;
}

ssize_t Tap::write_frame(const iovec* iov, std::size_t iovcnt, std::size_t total) noexcept {
    if (!stream_) return ::writev(fd_.get(), iov, static_cast<int>(iovcnt));
    if (!flush()) {
        errno = EAGAIN;
        return -1;
    }
    if (total <= VNET_HDR_LEN || iovcnt + 1 > static_cast<std::size_t>(IOV_MAX)) {
        errno = EMSGSIZE;
        return -1;
    }
    // The record: the length, then the frame without the virtio-net header.
    const auto len = static_cast<std::uint32_t>(total - VNET_HDR_LEN);
    const unsigned char be[kLenBytes] = {static_cast<unsigned char>(len >> 24), static_cast<unsigned char>(len >> 16),
                                         static_cast<unsigned char>(len >> 8), static_cast<unsigned char>(len)};
    iov_.clear();
    iov_.push_back({const_cast<unsigned char*>(be), kLenBytes});
    std::size_t skip = VNET_HDR_LEN;
    for (std::size_t i = 0; i < iovcnt; ++i) {
        if (iov[i].iov_len <= skip) {
            skip -= iov[i].iov_len;
            continue;
        }
        iov_.push_back({static_cast<char*>(iov[i].iov_base) + skip, iov[i].iov_len - skip});
        skip = 0;
    }
    msghdr mh{};
    mh.msg_iov = iov_.data();
    mh.msg_iovlen = iov_.size();
    ssize_t n;
    do n = ::sendmsg(fd_.get(), &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    // Keep the part the socket did not take; it goes before anything else.
    std::size_t sent = static_cast<std::size_t>(n);
    for (const iovec& v : iov_) {
        if (sent >= v.iov_len) {
            sent -= v.iov_len;
            continue;
        }
        const auto* b = static_cast<const std::byte*>(v.iov_base);
        out_.insert(out_.end(), b + sent, b + v.iov_len);
        sent = 0;
    }
    (void)flush();
    return static_cast<ssize_t>(total);
}

} // namespace ember::virtio::net
