#include "api/entropy_config.hpp"

#include "api/config.hpp"
#include "vmm/base/error.hpp"

namespace ember {

EntropyConfig parse_entropy(const nlohmann::json& j) {
    if (!j.is_object()) throw ConfigError("entropy must be a JSON object");
    reject_unknown(j, "entropy", {"rate_limiter"});
    if (auto r = j.find("rate_limiter"); r != j.end() && !r->is_null()) {
        if (!r->is_object()) throw ConfigError("entropy.rate_limiter must be a JSON object or null");
        throw ConfigError("entropy.rate_limiter for entropy needs the rate-limiter support, which this Ember version "
                          "does not have for the entropy device yet");
    }
    return EntropyConfig{};
}

nlohmann::json to_json(const EntropyConfig&) { return {{"rate_limiter", nullptr}}; }

} // namespace ember
