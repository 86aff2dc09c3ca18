#include "api/rate_limiter_config.hpp"

#include "vmm/base/error.hpp"

namespace ember {
namespace {

using nlohmann::json;

std::string kind_of(const json& v) {
    if (v.is_number_integer() && !v.is_number_unsigned()) return "negative";
    if (v.is_number_float()) return "a number with a fraction";
    return std::string("a ") + v.type_name();
}

std::uint64_t get_u64(const json& v, const std::string& where) {
    if (v.is_number_unsigned()) return v.get<std::uint64_t>();
    if (v.is_number_integer() && v.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v.get<std::int64_t>());
    throw ConfigError(where + " must be a non-negative integer, not " + kind_of(v));
}

void only_fields(const json& j, const std::string& where, std::initializer_list<const char*> known) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool ok = false;
        for (const char* k : known) ok = ok || it.key() == k;
        if (!ok) throw ConfigError(where + ": unknown field \"" + it.key() + "\"");
    }
}

RateLimiterConfig parse_object(const json& j, const std::string& where) {
    if (!j.is_object()) throw ConfigError(where + " must be a JSON object or null, not " + kind_of(j));
    only_fields(j, where, {"bandwidth", "ops"});
    RateLimiterConfig c;
    if (auto it = j.find("bandwidth"); it != j.end() && !it->is_null()) c.bandwidth = parse_token_bucket(*it, where + ".bandwidth");
    if (auto it = j.find("ops"); it != j.end() && !it->is_null()) c.ops = parse_token_bucket(*it, where + ".ops");
    return c;
}

} // namespace

TokenBucketConfig parse_token_bucket(const json& j, const std::string& where) {
    if (!j.is_object()) throw ConfigError(where + " must be a JSON object, not " + kind_of(j));
    only_fields(j, where, {"size", "one_time_burst", "refill_time"});
    TokenBucketConfig b;
    auto size = j.find("size");
    if (size == j.end()) throw ConfigError(where + ": missing required field \"size\"");
    b.size = get_u64(*size, where + ".size");
    auto refill = j.find("refill_time");
    if (refill == j.end()) throw ConfigError(where + ": missing required field \"refill_time\"");
    b.refill_time_ms = get_u64(*refill, where + ".refill_time");
    if (b.refill_time_ms > MAX_REFILL_TIME_MS)
        throw ConfigError(where + ".refill_time must be at most " + std::to_string(MAX_REFILL_TIME_MS) + " ms");
    if (auto otb = j.find("one_time_burst"); otb != j.end() && !otb->is_null()) b.one_time_burst = get_u64(*otb, where + ".one_time_burst");
    return b;
}

std::optional<RateLimiterConfig> parse_rate_limiter(const json& j, const std::string& where) {
    if (j.is_null()) return std::nullopt;
    return effective(parse_object(j, where));
}

RateLimiterUpdate parse_rate_limiter_update(const json* j, const std::string& where) {
    if (!j || j->is_null()) return {};
    const RateLimiterConfig c = parse_object(*j, where);
    return RateLimiterUpdate{c.bandwidth, c.ops};
}

std::optional<TokenBucketConfig> parse_serial_rate_limiter(const json& j) {
    if (!j.is_object()) return std::nullopt; // parse_serial refuses it
    auto it = j.find("rate_limiter");
    if (it == j.end() || it->is_null()) return std::nullopt;
    const TokenBucketConfig b = parse_token_bucket(*it, "serial.rate_limiter");
    if (!b.limits()) return std::nullopt;
    return b;
}

json to_json(const TokenBucketConfig& b) {
    return {{"size", b.size},
            {"one_time_burst", b.one_time_burst ? json(b.one_time_burst) : json(nullptr)},
            {"refill_time", b.refill_time_ms}};
}

json to_json(const std::optional<RateLimiterConfig>& c) {
    if (!c || !c->limits()) return nullptr;
    return {{"bandwidth", c->bandwidth ? to_json(*c->bandwidth) : json(nullptr)}, {"ops", c->ops ? to_json(*c->ops) : json(nullptr)}};
}

} // namespace ember
