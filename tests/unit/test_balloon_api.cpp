// The balloon API (Firecracker 1.16: PUT/GET/PATCH /balloon, GET/PATCH /balloon/statistics,
// /balloon/hinting/{start,status,stop}) and the config file's "balloon" section, through the
// router, the config parser and the controller before boot; the post-boot paths run on real KVM
// (tests/integration/balloon_test.sh).

#include "api/balloon_config.hpp"
#include "api/config.hpp"
#include "api/controller.hpp"
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

BalloonRequest req(const std::string& method, const std::string& path, const std::string& body = "") {
    auto r = route(method, path, body);
    REQUIRE(std::holds_alternative<Action>(r));
    REQUIRE(std::holds_alternative<BalloonRequest>(std::get<Action>(r)));
    return std::get<BalloonRequest>(std::get<Action>(r));
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
    static std::string fault(const Response& r) { return json::parse(r.body).at("fault_message").get<std::string>(); }
};

} // namespace

TEST_CASE("balloon: every endpoint routes with its body", "[balloon]") {
    const BalloonRequest put = req("PUT", "/balloon", R"({"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 2,
        "free_page_hinting": true, "free_page_reporting": true})");
    CHECK(put.kind == BalloonRequest::Kind::Put);
    CHECK(put.config == BalloonConfig{64, true, 2, true, true});
    CHECK(req("PUT", "/balloon", R"({"amount_mib": 0, "deflate_on_oom": false})").config == BalloonConfig{});
    CHECK(req("GET", "/balloon").kind == BalloonRequest::Kind::Get);
    const BalloonRequest patch = req("PATCH", "/balloon", R"({"amount_mib": 300})");
    CHECK(patch.kind == BalloonRequest::Kind::Patch);
    CHECK(patch.amount_mib == 300);
    CHECK(req("GET", "/balloon/statistics").kind == BalloonRequest::Kind::GetStats);
    const BalloonRequest stats = req("PATCH", "/balloon/statistics", R"({"stats_polling_interval_s": 7})");
    CHECK(stats.kind == BalloonRequest::Kind::PatchStats);
    CHECK(stats.stats_interval == 7);
    CHECK(req("PATCH", "/balloon/hinting/start").kind == BalloonRequest::Kind::HintStart);
    CHECK_FALSE(req("PATCH", "/balloon/hinting/start").acknowledge_on_stop);
    CHECK(req("PATCH", "/balloon/hinting/start", R"({"acknowledge_on_stop": true})").acknowledge_on_stop);
    CHECK(req("GET", "/balloon/hinting/status").kind == BalloonRequest::Kind::HintStatus);
    CHECK(req("PATCH", "/balloon/hinting/stop").kind == BalloonRequest::Kind::HintStop);
    // Request metrics: PUT, GET and PATCH groups, all named "balloon".
    auto a = route("PATCH", "/balloon/statistics", R"({"stats_polling_interval_s": 1})");
    CHECK(std::string(action_name(std::get<Action>(a))) == "balloon");
    CHECK(action_method(std::get<Action>(a)) == Method::Patch);
    CHECK(action_method(std::get<Action>(route("GET", "/balloon/hinting/status", ""))) == Method::Get);
    CHECK(action_method(std::get<Action>(route("PUT", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": false})"))) == Method::Put);
}

TEST_CASE("balloon: bad bodies and paths are 400s naming the problem", "[balloon]") {
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"deflate_on_oom": true})")), Catch::Contains("missing required field \"amount_mib\""));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": 1})")), Catch::Contains("missing required field \"deflate_on_oom\""));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": -1, "deflate_on_oom": true})")), Catch::Contains("balloon.amount_mib"));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": 1})")), Catch::Contains("balloon.deflate_on_oom"));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 65536})")),
               Catch::Contains("stats_polling_interval_s must be at most 65535"));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": 16777216, "deflate_on_oom": true})")),
               Catch::Contains("Amount of pages requested is too large."));
    CHECK_THAT(fault_of(route("PUT", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": true, "bogus": 1})")),
               Catch::Contains("balloon: unknown field \"bogus\""));
    CHECK_THAT(fault_of(route("PUT", "/balloon", "[]")), Catch::Contains("balloon must be a JSON object"));
    CHECK_THAT(fault_of(route("PUT", "/balloon", "")), Catch::Contains("needs a JSON body"));
    CHECK_THAT(fault_of(route("PATCH", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": true})")),
               Catch::Contains("balloon update: unknown field \"deflate_on_oom\""));
    CHECK_THAT(fault_of(route("PATCH", "/balloon", R"({})")), Catch::Contains("missing required field \"amount_mib\""));
    CHECK_THAT(fault_of(route("PATCH", "/balloon/statistics", R"({"stats_polling_interval_s": "1"})")),
               Catch::Contains("stats_polling_interval_s must be a non-negative integer"));
    CHECK_THAT(fault_of(route("PATCH", "/balloon/hinting/start", R"({"acknowledge_on_stop": 1})")),
               Catch::Contains("acknowledge_on_stop must be true or false"));
    CHECK_THAT(fault_of(route("PATCH", "/balloon/hinting/start", "{")), Catch::Contains("not valid JSON"));
    for (auto [m, p] : {std::pair{"DELETE", "/balloon"}, {"PUT", "/balloon/statistics"}, {"GET", "/balloon/hinting/start"},
                        {"PATCH", "/balloon/hinting/status"}, {"PUT", "/balloon/hinting/stop"}, {"GET", "/balloon/x"}, {"GET", "/balloonx"}})
        CHECK_THAT(fault_of(route(m, p, "{}")), Catch::Contains("Invalid request method and/or path"));
}

TEST_CASE("balloon: the config file's section adds the device and GET /vm/config shows it back", "[balloon]") {
    json j = json::parse(DOC);
    CHECK_FALSE(parse_config_file(j.dump(), 4096).balloon);
    j["balloon"] = nullptr;
    CHECK_FALSE(parse_config_file(j.dump(), 4096).balloon);
    j["balloon"] = json{{"amount_mib", 10}, {"deflate_on_oom", true}, {"stats_polling_interval_s", 1}};
    const VmConfig c = parse_config_file(j.dump(), 4096);
    REQUIRE(c.balloon);
    CHECK(*c.balloon == BalloonConfig{10, true, 1, false, false});
    const json out = to_json(c);
    CHECK(out.at("balloon") == json{{"amount_mib", 10}, {"deflate_on_oom", true}, {"stats_polling_interval_s", 1},
                                    {"free_page_hinting", false}, {"free_page_reporting", false}});
    CHECK(parse_config_file(out.dump(), 4096).balloon == c.balloon);
    j["balloon"] = json{{"amount_mib", 10}};
    CHECK_CONFIG_ERROR(parse_config_file(j.dump(), 4096), "deflate_on_oom");
}

TEST_CASE("balloon: the controller takes PUT before boot and refuses the runtime requests with Firecracker's messages", "[balloon]") {
    Rig r;
    CHECK(r.vm_config().at("balloon").is_null());
    Response g = r.call("GET", "/balloon");
    CHECK(g.status == 400);
    CHECK(Rig::fault(g) == "No balloon device found.");
    CHECK(r.call("PUT", "/balloon", R"({"amount_mib": 1, "deflate_on_oom": 3})").status == 400);
    CHECK(r.vm_config().at("balloon").is_null()); // a refused body changes nothing
    CHECK(r.call("PUT", "/balloon", R"({"amount_mib": 8, "deflate_on_oom": true})").status == 204);
    CHECK(r.call("PUT", "/balloon", R"({"amount_mib": 16, "deflate_on_oom": false, "stats_polling_interval_s": 1})").status == 204);
    g = r.call("GET", "/balloon");
    REQUIRE(g.status == 200);
    CHECK(json::parse(g.body) == json{{"amount_mib", 16}, {"deflate_on_oom", false}, {"stats_polling_interval_s", 1},
                                      {"free_page_hinting", false}, {"free_page_reporting", false}});
    CHECK(r.vm_config().at("balloon").at("amount_mib") == 16);
    for (auto [m, p, b] : {std::tuple{"PATCH", "/balloon", R"({"amount_mib": 4})"}, {"GET", "/balloon/statistics", ""},
                           {"PATCH", "/balloon/statistics", R"({"stats_polling_interval_s": 2})"}, {"PATCH", "/balloon/hinting/start", ""},
                           {"GET", "/balloon/hinting/status", ""}, {"PATCH", "/balloon/hinting/stop", ""}}) {
        CAPTURE(m, p);
        const Response resp = r.call(m, p, b);
        CHECK(resp.status == 400);
        CHECK(Rig::fault(resp) == "The requested operation is not supported before starting the microVM.");
    }
    CHECK(r.vm_config().at("balloon").at("amount_mib") == 16);
    const json mt = json::parse(r.ctl->metrics_line());
    CHECK(mt.at("put_api_requests").at("balloon_count") == 2); // the router refused the third
    CHECK(mt.at("put_api_requests").at("balloon_fails") == 1);
    CHECK(mt.at("patch_api_requests").at("balloon_fails") == 4);
    CHECK(mt.at("balloon").is_object()); // in every line, as Firecracker writes it
}

TEST_CASE("balloon: statistics and hinting status render as Firecracker's BalloonStats", "[balloon]") {
    virtio::balloon::BalloonStatsView v{512, 256, {}};
    v.guest.values[virtio::balloon::stat_tag::MEMFREE] = 100;
    v.guest.values[virtio::balloon::stat_tag::MEMTOT] = 200;
    CHECK(to_json(v) == json{{"target_pages", 512}, {"actual_pages", 256}, {"target_mib", 2}, {"actual_mib", 1},
                             {"free_memory", 100}, {"total_memory", 200}});
    CHECK(to_json(virtio::balloon::HintingStatus{3, std::nullopt}) == json{{"host_cmd", 3}});
    CHECK(to_json(virtio::balloon::HintingStatus{1, 0}) == json{{"host_cmd", 1}, {"guest_cmd", 0}});
}
