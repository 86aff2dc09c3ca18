#pragma once
// Firecracker's RateLimiter and TokenBucket objects (firecracker-api v1.16.1; serde structs with
// deny_unknown_fields in src/vmm/src/vmm_config/mod.rs):
//   RateLimiter  {"bandwidth": TokenBucket | null, "ops": TokenBucket | null}
//   TokenBucket  {"size": u64, "one_time_burst": u64 | null, "refill_time": u64 (ms)}
// Used by drives (rate_limiter), network interfaces (rx_/tx_rate_limiter), their PATCH bodies,
// and the serial device (a bare TokenBucket). Every error is one ConfigError line naming the
// field.

#include "vmm/base/rate_limiter.hpp"

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

namespace ember {

// A TokenBucket object. `where` names it in errors ("drive a.rate_limiter.bandwidth").
// A refill_time whose nanoseconds overflow 64 bits is refused (Firecracker silently disables
// such a bucket instead).
TokenBucketConfig parse_token_bucket(const nlohmann::json& j, const std::string& where);
// A RateLimiter object or null, as configured on a device: the buckets that limit something
// (effective()), nullopt when none does.
std::optional<RateLimiterConfig> parse_rate_limiter(const nlohmann::json& j, const std::string& where);
// A RateLimiter object in a PATCH body, as Firecracker's RateLimiterUpdate: `j` null or absent
// (nullptr) changes nothing; a bucket absent or null is left alone; one with size or
// refill_time 0 is removed; any other replaces the bucket (full again).
RateLimiterUpdate parse_rate_limiter_update(const nlohmann::json* j, const std::string& where);

// Firecracker 1.16's SerialDevice.rate_limiter (a TokenBucket or null) in the serial object `j`:
// nullopt when absent, null, or a bucket that limits nothing.
std::optional<TokenBucketConfig> parse_serial_rate_limiter(const nlohmann::json& j);

// GET /vm/config: null when nothing is limited, else both keys (a missing bucket is null).
nlohmann::json to_json(const std::optional<RateLimiterConfig>& c);
nlohmann::json to_json(const TokenBucketConfig& b);

} // namespace ember
