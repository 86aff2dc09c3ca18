// PUT /entropy and the config file's "entropy" section (Firecracker's EntropyDevice: one
// optional rate_limiter, unknown fields denied), through the router, the config parser and the
// controller, and how GET /vm/config and the metrics show the device.

#include "api/config.hpp"
#include "api/controller.hpp"
#include "api/entropy_config.hpp"
#include "api/routes.hpp"
#include "test_util.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>

using namespace ember;
using namespace ember::api;
using nlohmann::json;

namespace {

const char* const DOC = R"({
  "boot-source": {"kernel_image_path": "/nonexistent/vmlinux"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
})";

std::string fault_of(const std::variant<Action, Response>& r) {
    REQUIRE(std::holds_alternative<Response>(r));
    const Response& resp = std::get<Response>(r);
    CHECK(resp.status == 400);
    return json::parse(resp.body).at("fault_message").get<std::string>();
}

struct Rig {
    boost::asio::io_context io;
    std::unique_ptr<Controller> ctl;
    Rig() {
        RunOptions opts;
        opts.kvm_path = "/nonexistent/kvm";
        ctl = std::make_unique<Controller>(io, "test-vm", opts, 4096, nullptr);
    }
    Response call(const std::string& method, const std::string& path, const std::string& body = "") {
        auto r = route(method, path, body);
        if (std::holds_alternative<Response>(r)) {
            ctl->count_rejected(method, path);
            return std::get<Response>(r);
        }
        return ctl->handle(std::get<Action>(r));
    }
    json vm_config() { return json::parse(call("GET", "/vm/config").body); }
};

} // namespace

TEST_CASE("entropy: PUT /entropy routes with an empty body, a rate limiter, a null one or none", "[entropy]") {
    for (const char* body : {"{}", R"({"rate_limiter": null})", R"({"rate_limiter": {}})",
                             R"({"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}, "ops": null}})"}) {
        CAPTURE(body);
        auto r = route("PUT", "/entropy", body);
        REQUIRE(std::holds_alternative<Action>(r));
        CHECK(std::holds_alternative<PutEntropy>(std::get<Action>(r)));
        CHECK(std::string(action_name(std::get<Action>(r))) == "entropy");
    }
}

TEST_CASE("entropy: bad PUT /entropy bodies are 400s naming the problem", "[entropy]") {
    CHECK_THAT(fault_of(route("PUT", "/entropy", R"({"rate_limiter": {"bandwidth": {"size": -1, "refill_time": 100}}})")),
               Catch::Contains("entropy.rate_limiter.bandwidth.size must be a non-negative integer"));
    CHECK_THAT(fault_of(route("PUT", "/entropy", R"({"rate_limiter": {"ops": {"size": 10}}})")),
               Catch::Contains("entropy.rate_limiter.ops: missing required field \"refill_time\""));
    CHECK_THAT(fault_of(route("PUT", "/entropy", R"({"rate_limiter": {"bytes": {}}})")),
               Catch::Contains("entropy.rate_limiter: unknown field \"bytes\""));
    CHECK_THAT(fault_of(route("PUT", "/entropy", R"({"rate_limiter": 5})")), Catch::Contains("entropy.rate_limiter must be a JSON object"));
    CHECK_THAT(fault_of(route("PUT", "/entropy", R"({"rng": "virtio"})")), Catch::Contains("entropy: unknown field \"rng\""));
    CHECK_THAT(fault_of(route("PUT", "/entropy", "[]")), Catch::Contains("entropy must be a JSON object"));
    CHECK_THAT(fault_of(route("PUT", "/entropy", "")), Catch::Contains("needs a JSON body"));
    CHECK_THAT(fault_of(route("PUT", "/entropy", "{")), Catch::Contains("not valid JSON"));
    for (const char* m : {"GET", "PATCH", "DELETE"}) {
        CAPTURE(m);
        CHECK_THAT(fault_of(route(m, "/entropy", "{}")), Catch::Contains("Invalid request method and/or path"));
    }
    CHECK_THAT(fault_of(route("PUT", "/entropy/x", "{}")), Catch::Contains("Invalid request method and/or path"));
}

TEST_CASE("entropy: the config file's section adds the device; null or absent leaves it out", "[entropy]") {
    json j = json::parse(DOC);
    CHECK_FALSE(parse_config_file(j.dump(), 4096).entropy);
    j["entropy"] = nullptr;
    CHECK_FALSE(parse_config_file(j.dump(), 4096).entropy);
    j["entropy"] = json::object();
    CHECK(parse_config_file(j.dump(), 4096).entropy == EntropyConfig{});
    j["entropy"] = json{{"rate_limiter", nullptr}};
    CHECK(parse_config_file(j.dump(), 4096).entropy);
    j["entropy"] = json{{"rate_limiter", {{"ops", {{"size", 10}, {"refill_time", 1000}}}}}};
    const auto limited = parse_config_file(j.dump(), 4096).entropy;
    REQUIRE(limited);
    REQUIRE(limited->rate_limiter);
    CHECK_FALSE(limited->rate_limiter->bandwidth);
    REQUIRE(limited->rate_limiter->ops);
    CHECK(limited->rate_limiter->ops->size == 10);
    CHECK(limited->rate_limiter->ops->refill_time_ms == 1000);
    j["entropy"] = json{{"rate_limiter", {{"ops", {{"size", 10}, {"refill_time", "1s"}}}}}};
    CHECK_CONFIG_ERROR(parse_config_file(j.dump(), 4096), "entropy.rate_limiter.ops.refill_time");
    j["entropy"] = json{{"bandwidth", 1}};
    CHECK_CONFIG_ERROR(parse_config_file(j.dump(), 4096), "entropy: unknown field \"bandwidth\"");
    j["entropy"] = json::array();
    CHECK_CONFIG_ERROR(parse_config_file(j.dump(), 4096), "entropy must be a JSON object");
}

TEST_CASE("entropy: GET /vm/config shows the section as Firecracker does, and it round-trips", "[entropy]") {
    VmConfig c = parse_config_file(DOC, 4096);
    CHECK(to_json(c).at("entropy").is_null());
    c.entropy = EntropyConfig{};
    const json out = to_json(c);
    CHECK(out.at("entropy") == json{{"rate_limiter", nullptr}});
    CHECK(parse_config_file(out.dump(), 4096).entropy == EntropyConfig{});

    c.entropy = EntropyConfig{RateLimiterConfig{TokenBucketConfig{1000, 0, 100}, std::nullopt}};
    const json limited = to_json(c);
    CHECK(limited.at("entropy").at("rate_limiter").at("bandwidth").at("size") == 1000);
    CHECK(limited.at("entropy").at("rate_limiter").at("bandwidth").at("refill_time") == 100);
    CHECK(limited.at("entropy").at("rate_limiter").at("ops").is_null());
    CHECK(parse_config_file(limited.dump(), 4096).entropy == c.entropy);
}

TEST_CASE("entropy: the controller takes PUT /entropy before boot, counts it, and refuses bad bodies unchanged", "[entropy]") {
    Rig r;
    CHECK(r.vm_config().at("entropy").is_null());
    CHECK(r.call("PUT", "/entropy", R"({"rate_limiter": {"bandwidth": {"size": 1, "refill_time": "x"}}})").status == 400);
    CHECK(r.vm_config().at("entropy").is_null()); // a refused body changes nothing
    CHECK(r.call("PUT", "/entropy", "{}").status == 204);
    CHECK(r.vm_config().at("entropy") == json{{"rate_limiter", nullptr}});
    CHECK(r.call("PUT", "/entropy", R"({"rate_limiter": null})").status == 204); // again: replaces it
    CHECK(r.vm_config().at("entropy") == json{{"rate_limiter", nullptr}});
    CHECK(r.call("PUT", "/entropy", R"({"rate_limiter": {"ops": {"size": 5, "one_time_burst": 7, "refill_time": 1000}}})").status == 204);
    const json rl = r.vm_config().at("entropy").at("rate_limiter");
    CHECK(rl.at("bandwidth").is_null());
    CHECK(rl.at("ops") == json{{"size", 5}, {"one_time_burst", 7}, {"refill_time", 1000}});
    const json mt = json::parse(r.ctl->metrics_line());
    CHECK(mt.at("put_api_requests").at("entropy_count") == 3);
    CHECK(mt.at("put_api_requests").at("entropy_fails") == 1);
    // Firecracker writes the entropy group in every line, device or not.
    CHECK(mt.at("entropy").is_object());
}
