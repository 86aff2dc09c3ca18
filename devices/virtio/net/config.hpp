#pragma once
// A network interface as configured (Firecracker's NetworkInterface, PUT
// /network-interfaces/{id}): plain values, independent of JSON.

#include "vmm/base/mac_addr.hpp"
#include "vmm/base/rate_limiter.hpp"
#include "vmm/base/unique_fd.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace ember {

// Firecracker's NetworkInterface.
struct NetConfig {
    std::string iface_id;
    std::string host_dev_name;
    std::optional<MacAddr> guest_mac;
    std::optional<std::uint16_t> mtu; // 68..65535
    std::optional<RateLimiterConfig> rx_rate_limiter, tx_rate_limiter; // as DriveConfig::rate_limiter
    // Ember-internal, never in JSON (ember run --net): a connected stream socket to passt. When
    // set, the link is this socket (backend.hpp) and host_dev_name only names it.
    std::shared_ptr<const UniqueFd> passt_socket = nullptr;
};

} // namespace ember
