#pragma once
// The entropy device as configured (Firecracker's EntropyDevice, PUT /entropy and the config
// file's "entropy" section): plain values, independent of JSON.
//
// Firecracker's only field is `rate_limiter` (vmm_config/entropy.rs EntropyDeviceConfig): the
// bytes bucket bounds the random bytes served per second, the ops bucket the requests per second.

#include "vmm/base/rate_limiter.hpp"

#include <optional>

namespace ember {

struct EntropyConfig {
    // nullopt: nothing is limited (parse_rate_limiter keeps only buckets that limit something).
    std::optional<RateLimiterConfig> rate_limiter;
    bool operator==(const EntropyConfig&) const = default;
};

} // namespace ember
