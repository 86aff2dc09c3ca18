#include "api/balloon_config.hpp"

#include "api/config.hpp"
#include "vmm/base/error.hpp"

#include <limits>

namespace ember {
namespace {

using nlohmann::json;
namespace vb = virtio::balloon;

std::uint64_t uint_in(const json& j, const char* key, const std::string& where, std::uint64_t max) {
    const json& v = j.at(key);
    const std::string name = where + "." + key;
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
        throw ConfigError(name + " must be a non-negative integer");
    const std::uint64_t n = v.get<std::uint64_t>();
    if (n > max) throw ConfigError(name + " must be at most " + std::to_string(max));
    return n;
}

bool bool_of(const json& j, const char* key, const std::string& where) {
    const json& v = j.at(key);
    if (!v.is_boolean()) throw ConfigError(where + "." + key + " must be true or false");
    return v.get<bool>();
}

void require(const json& j, const char* key, const std::string& where) {
    if (!j.contains(key)) throw ConfigError(where + ": missing required field \"" + key + "\"");
}

json parse_body(const std::string& body) {
    if (body.empty()) throw ConfigError("the request needs a JSON body");
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        throw ConfigError(std::string("the request body is not valid JSON: ") + e.what());
    }
}

constexpr std::uint64_t kU16 = std::numeric_limits<std::uint16_t>::max();
constexpr std::uint64_t kU32 = std::numeric_limits<std::uint32_t>::max();

} // namespace

BalloonConfig parse_balloon(const json& j) {
    const std::string w = "balloon";
    if (!j.is_object()) throw ConfigError("balloon must be a JSON object");
    reject_unknown(j, w, {"amount_mib", "deflate_on_oom", "stats_polling_interval_s", "free_page_hinting", "free_page_reporting"});
    require(j, "amount_mib", w);
    require(j, "deflate_on_oom", w);
    BalloonConfig c;
    c.amount_mib = static_cast<std::uint32_t>(uint_in(j, "amount_mib", w, kU32));
    // Firecracker's Balloon::new: the target in 4 KiB pages must fit 32 bits.
    if (c.amount_mib > kU32 / vb::PAGES_PER_MIB) throw ConfigError("Amount of pages requested is too large.");
    c.deflate_on_oom = bool_of(j, "deflate_on_oom", w);
    if (j.contains("stats_polling_interval_s")) c.stats_polling_interval_s = static_cast<std::uint16_t>(uint_in(j, "stats_polling_interval_s", w, kU16));
    if (j.contains("free_page_hinting")) c.free_page_hinting = bool_of(j, "free_page_hinting", w);
    if (j.contains("free_page_reporting")) c.free_page_reporting = bool_of(j, "free_page_reporting", w);
    return c;
}

json to_json(const BalloonConfig& c) {
    return {{"amount_mib", c.amount_mib},
            {"deflate_on_oom", c.deflate_on_oom},
            {"stats_polling_interval_s", c.stats_polling_interval_s},
            {"free_page_hinting", c.free_page_hinting},
            {"free_page_reporting", c.free_page_reporting}};
}

json to_json(const vb::BalloonStatsView& s) {
    json j = {{"target_pages", s.target_pages},
              {"actual_pages", s.actual_pages},
              {"target_mib", s.target_pages / vb::PAGES_PER_MIB},
              {"actual_mib", s.actual_pages / vb::PAGES_PER_MIB}};
    for (std::uint16_t t = 0; t < vb::stat_tag::COUNT; ++t)
        if (s.guest.values[t]) j[vb::stat_name(t)] = *s.guest.values[t];
    return j;
}

json to_json(const vb::HintingStatus& s) {
    json j = {{"host_cmd", s.host_cmd}};
    if (s.guest_cmd) j["guest_cmd"] = *s.guest_cmd;
    return j;
}

namespace api {

BalloonRequest route_balloon(const std::string& method, const std::string& path, const std::string& body) {
    const std::string sub = path.substr(std::string("/balloon").size());
    auto invalid = [&] { return ConfigError("Invalid request method and/or path: " + method + " " + path); };
    BalloonRequest r;
    if (sub.empty()) {
        if (method == "GET") {
            r.kind = BalloonRequest::Kind::Get;
        } else if (method == "PUT") {
            r.kind = BalloonRequest::Kind::Put;
            r.config = parse_balloon(parse_body(body));
        } else if (method == "PATCH") {
            r.kind = BalloonRequest::Kind::Patch;
            const json j = parse_body(body);
            if (!j.is_object()) throw ConfigError("balloon update must be a JSON object");
            reject_unknown(j, "balloon update", {"amount_mib"});
            require(j, "amount_mib", "balloon update");
            r.amount_mib = static_cast<std::uint32_t>(uint_in(j, "amount_mib", "balloon update", kU32));
        } else {
            throw invalid();
        }
        return r;
    }
    if (sub == "/statistics") {
        if (method == "GET") {
            r.kind = BalloonRequest::Kind::GetStats;
        } else if (method == "PATCH") {
            r.kind = BalloonRequest::Kind::PatchStats;
            const json j = parse_body(body);
            if (!j.is_object()) throw ConfigError("balloon statistics update must be a JSON object");
            reject_unknown(j, "balloon statistics update", {"stats_polling_interval_s"});
            require(j, "stats_polling_interval_s", "balloon statistics update");
            r.stats_interval = static_cast<std::uint16_t>(uint_in(j, "stats_polling_interval_s", "balloon statistics update", kU16));
        } else {
            throw invalid();
        }
        return r;
    }
    if (sub == "/hinting/start" && method == "PATCH") {
        r.kind = BalloonRequest::Kind::HintStart;
        if (!body.empty()) { // BalloonStartCmd is optional
            const json j = parse_body(body);
            if (!j.is_object()) throw ConfigError("balloon hinting start must be a JSON object");
            reject_unknown(j, "balloon hinting start", {"acknowledge_on_stop"});
            if (j.contains("acknowledge_on_stop")) r.acknowledge_on_stop = bool_of(j, "acknowledge_on_stop", "balloon hinting start");
        }
        return r;
    }
    if (sub == "/hinting/status" && method == "GET") {
        r.kind = BalloonRequest::Kind::HintStatus;
        return r;
    }
    if (sub == "/hinting/stop" && method == "PATCH") {
        r.kind = BalloonRequest::Kind::HintStop;
        return r;
    }
    throw invalid();
}

} // namespace api
} // namespace ember
