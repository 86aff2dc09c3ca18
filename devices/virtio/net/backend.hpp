#pragma once
// The host side of virtio-net: a link that carries Ethernet frames. Either an existing TAP
// interface, opened as Firecracker does (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking), or a
// connected stream socket to passt speaking QEMU's stream netdev protocol (each frame preceded by
// its length, 32-bit big-endian; no virtio-net header, so no offloads). Ember never creates or
// configures host interfaces; a TAP must exist and be free.

#include "vmm/base/unique_fd.hpp"
#include "devices/virtio/net/config.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <sys/types.h>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::net {

// TUNSETOFFLOAD bits (linux/if_tun.h): what the TAP may hand us (guest receive offloads).
inline constexpr unsigned TAP_F_CSUM = 0x01;
inline constexpr unsigned TAP_F_TSO4 = 0x02;
inline constexpr unsigned TAP_F_TSO6 = 0x04;

class Tap {
public:
    // Attaches to the TAP `name` with a `vnet_hdr_len`-byte virtio-net header on every frame.
    // Throws ConfigError naming the interface when it does not exist, is busy or is not a TAP.
    Tap(const std::string& name, int vnet_hdr_len);
    // Adopts `fd`, already set up by someone else: a TAP opened with IFF_VNET_HDR and a 12-byte
    // header, non-blocking, or any descriptor that carries one frame per read and write (a
    // SOCK_SEQPACKET socket in tests). A descriptor that is not a TAP takes no offloads:
    // set_offload(0) succeeds on it and any other set fails.
    static std::unique_ptr<Tap> adopt(UniqueFd fd, std::string name);
    // Adopts a connected stream socket (made non-blocking here) framed as QEMU's stream netdev
    // (passt's socket). Takes no offloads: offloads() is false.
    static std::unique_ptr<Tap> adopt_stream(UniqueFd fd, std::string name);

    int fd() const noexcept { return fd_.get(); }
    const std::string& name() const noexcept { return name_; }
    // Whether the link takes the virtio-net header's checksum and segmentation offloads.
    bool offloads() const noexcept { return !stream_; }
    // TUNSETOFFLOAD; false on failure (the caller then offers fewer features).
    bool set_offload(unsigned flags) noexcept;

    // One frame into `buf`, a VNET_HDR_LEN-byte header first (all zero on a stream link): its
    // length, or -1 with errno EAGAIN (none now), EPIPE (the peer closed the link), EPROTO (the
    // peer broke the framing; the link is then closed for good) or the read's own error.
    ssize_t read_frame(std::span<std::byte> buf) noexcept;
    // One frame gathered from `iov` (`total` bytes, the header first): `total`, or -1 with errno
    // (EAGAIN: the link is full; nothing was taken). On a stream link a frame the socket takes
    // only in part is kept and sent by flush(), before any later frame.
    ssize_t write_frame(const iovec* iov, std::size_t iovcnt, std::size_t total) noexcept;
    // Sends what a stream link kept of a frame; true when nothing is left (always on a TAP).
    bool flush() noexcept;
    bool pending() const noexcept { return out_pos_ < out_.size(); }

private:
    Tap() = default;
    UniqueFd fd_;
    std::string name_;
    bool stream_ = false, broken_ = false;
    // Stream link: bytes read and not yet handed out ([in_pos_, in_end_)) and the unsent tail of
    // a frame ([out_pos_, out_.size())). Allocated, not touched, when the link is adopted.
    std::unique_ptr<std::byte[]> in_;
    std::vector<std::byte> out_;
    std::size_t in_pos_ = 0, in_end_ = 0, out_pos_ = 0;
    std::vector<iovec> iov_;
};

// A Tap for `cfg.host_dev_name`, with errors naming the interface ("network interface eth0: TAP
// tap0: ..."); used both when the VM is prepared and by PUT /network-interfaces.
std::unique_ptr<Tap> open_tap(const NetConfig& cfg);

} // namespace ember::virtio::net
