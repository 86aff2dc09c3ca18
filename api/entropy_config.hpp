#pragma once
// Firecracker's EntropyDevice object (firecracker-api v1.16.1; vmm_config/entropy.rs
// EntropyDeviceConfig, a serde struct with deny_unknown_fields):
//   {"rate_limiter": RateLimiter | null}
// used by PUT /entropy and the config file's "entropy" section.

#include "devices/virtio/rng/config.hpp"

#include <nlohmann/json.hpp>

namespace ember {

// Throws ConfigError with one line naming the field (the rate limiter's as for drives:
// parse_rate_limiter, "entropy.rate_limiter...").
EntropyConfig parse_entropy(const nlohmann::json& j);
// GET /vm/config: {"rate_limiter": null} for a device that limits nothing, as Firecracker shows.
nlohmann::json to_json(const EntropyConfig& c);

} // namespace ember
