#include "devices/virtio/net/backend.hpp"

#include "devices/virtio/net/request.hpp"

#include "vmm/base/error.hpp"

#include <cerrno>
#include <cstring>
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

bool Tap::set_offload(unsigned flags) noexcept {
    if (::ioctl(fd_.get(), TUNSETOFFLOAD, flags) == 0) return true;
    return flags == 0 && errno == ENOTTY; // not a TAP: no offloads to turn off
}

} // namespace ember::virtio::net
