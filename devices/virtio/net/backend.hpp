#pragma once
// The host side of virtio-net: an existing TAP interface, opened as Firecracker does
// (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking). Ember never creates or configures host
// interfaces; the TAP must exist and be free.

#include "vmm/base/unique_fd.hpp"
#include "devices/virtio/net/config.hpp"

#include <cstdint>
#include <memory>
#include <string>

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
    int fd() const noexcept { return fd_.get(); }
    const std::string& name() const noexcept { return name_; }
    // TUNSETOFFLOAD; false on failure (the caller then offers fewer features).
    bool set_offload(unsigned flags) noexcept;

private:
    Tap() = default;
    UniqueFd fd_;
    std::string name_;
};

// A Tap for `cfg.host_dev_name`, with errors naming the interface ("network interface eth0: TAP
// tap0: ..."); used both when the VM is prepared and by PUT /network-interfaces.
std::unique_ptr<Tap> open_tap(const NetConfig& cfg);

} // namespace ember::virtio::net
