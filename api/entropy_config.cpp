#include "api/entropy_config.hpp"

#include "api/config.hpp"
#include "api/rate_limiter_config.hpp"
#include "vmm/base/error.hpp"

namespace ember {

EntropyConfig parse_entropy(const nlohmann::json& j) {
    if (!j.is_object()) throw ConfigError("entropy must be a JSON object");
    reject_unknown(j, "entropy", {"rate_limiter"});
    EntropyConfig c;
    if (auto r = j.find("rate_limiter"); r != j.end()) c.rate_limiter = parse_rate_limiter(*r, "entropy.rate_limiter");
    return c;
}

nlohmann::json to_json(const EntropyConfig& c) { return {{"rate_limiter", to_json(c.rate_limiter)}}; }

} // namespace ember
