#pragma once
// A vsock device as configured (Firecracker's VsockDeviceConfig, PUT /vsock): plain values,
// independent of JSON.

#include <cstdint>
#include <optional>
#include <string>

namespace ember {

struct VsockConfig {
    std::optional<std::string> vsock_id; // deprecated in Firecracker's API; kept when given
    std::uint64_t guest_cid = 0;         // >= 3
    std::string uds_path;
    bool operator==(const VsockConfig&) const = default;
};

} // namespace ember
