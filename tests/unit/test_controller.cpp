// The controller without KVM: std::visit dispatch, the pre-boot/runtime phases, request metrics
// (Firecracker's <name>_count and <name>_fails), and a failed InstanceStart that changes nothing.

#include "api/controller.hpp"
#include "api/routes.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace ember;
using namespace ember::api;
using nlohmann::json;

namespace {

struct Rig {
    boost::asio::io_context io;
    RunOptions opts;
    std::unique_ptr<Controller> ctl;
    Rig() {
        opts.kvm_path = "/nonexistent/kvm";
        ctl = std::make_unique<Controller>(io, "test-vm", opts, 4096, nullptr);
    }
    Response call(const std::string& method, const std::string& path, const std::string& body = "") {
        auto r = route(method, path, body);
        REQUIRE(std::holds_alternative<Action>(r));
        return ctl->handle(std::get<Action>(r));
    }
    json metrics() { return json::parse(ctl->metrics_line()); }
};

std::string fault(const Response& r) {
    CHECK(r.status == 400);
    return json::parse(r.body).at("fault_message").get<std::string>();
}

} // namespace

TEST_CASE("controller: pre-boot actions configure, GETs read back") {
    Rig r;
    CHECK(r.call("PUT", "/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 256})").status == 204);
    CHECK(r.call("PATCH", "/machine-config", R"({"mem_size_mib": 512})").status == 204);
    const Response got = r.call("GET", "/machine-config");
    REQUIRE(got.status == 200);
    const json m = json::parse(got.body);
    CHECK(m.at("vcpu_count") == 2);
    CHECK(m.at("mem_size_mib") == 512);
    const json info = json::parse(r.call("GET", "/").body);
    CHECK(info.at("state") == "Not started");
    CHECK(info.at("id") == "test-vm");

    const json mt = r.metrics();
    CHECK(mt.at("put_api_requests").at("machine_cfg_count") == 1);
    CHECK(mt.at("patch_api_requests").at("machine_cfg_count") == 1);
    CHECK(mt.at("get_api_requests").at("machine_cfg_count") == 1);
    CHECK(mt.at("get_api_requests").at("instance_info_count") == 1);
    // No VM: no per-device groups, and Firecracker's always-present aggregate "block" is empty.
    CHECK(mt.at("block").empty());
    for (const auto& [group, values] : mt.items()) CHECK_FALSE(group.rfind("block_", 0) == 0);
}

TEST_CASE("controller: runtime actions before boot are refused and counted as failures") {
    Rig r;
    CHECK_THAT(fault(r.call("PATCH", "/vm", R"({"state": "Paused"})")), Catch::Contains("before starting the microVM"));
    CHECK_THAT(fault(r.call("PUT", "/actions", R"({"action_type": "SendCtrlAltDel"})")), Catch::Contains("before starting"));
    CHECK_THAT(fault(r.call("PATCH", "/drives/rootfs", R"({"drive_id": "rootfs", "path_on_host": "/x"})")),
               Catch::Contains("before starting"));
    const json mt = r.metrics();
    CHECK(mt.at("patch_api_requests").at("vm_fails") == 1);
    CHECK_FALSE(mt.at("patch_api_requests").contains("vm_count")); // PATCH /vm has no _count
    CHECK(mt.at("put_api_requests").at("actions_count") == 1);
    CHECK(mt.at("put_api_requests").at("actions_fails") == 1);
    CHECK(mt.at("patch_api_requests").at("drive_count") == 1);
    CHECK(mt.at("patch_api_requests").at("drive_fails") == 1);
}

TEST_CASE("controller: an invalid body is a 400 that changes nothing") {
    Rig r;
    CHECK(r.call("PUT", "/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 256})").status == 204);
    CHECK_THAT(fault(r.call("PUT", "/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 999999})")),
               Catch::Contains("mem_size_mib"));
    CHECK(json::parse(r.call("GET", "/machine-config").body).at("mem_size_mib") == 256);
    const json mt = r.metrics();
    CHECK(mt.at("put_api_requests").at("machine_cfg_count") == 2);
    CHECK(mt.at("put_api_requests").at("machine_cfg_fails") == 1);
    // Counters are reported as the increase since the previous line.
    CHECK(r.metrics().at("put_api_requests").at("machine_cfg_count") == 0);
}

TEST_CASE("controller: a failed InstanceStart leaves the VM unstarted and configurable") {
    Rig r;
    CHECK_THAT(fault(r.call("PUT", "/actions", R"({"action_type": "InstanceStart"})")), Catch::Contains("no boot source"));
    CHECK_FALSE(r.ctl->started());
    CHECK(r.call("PUT", "/boot-source", R"({"kernel_image_path": "/nonexistent/vmlinux"})").status == 204);
    CHECK_THAT(fault(r.call("PUT", "/actions", R"({"action_type": "InstanceStart"})")), Catch::Contains("/nonexistent/vmlinux"));
    CHECK_FALSE(r.ctl->started());
    CHECK(r.call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128})").status == 204); // still pre-boot
    const json mt = r.metrics();
    CHECK(mt.at("put_api_requests").at("actions_count") == 2);
    CHECK(mt.at("put_api_requests").at("actions_fails") == 2);
}

TEST_CASE("controller: every metrics line has the groups Firecracker always writes") {
    Rig r; // nothing configured, nothing counted: no drive, no network interface, no request
    const json mt = r.metrics();
    for (const char* g : {"get_api_requests", "put_api_requests", "patch_api_requests", "latencies_us", "block", "net",
                          "uart", "vcpu", "vmm", "logger", "api_server"}) {
        INFO(g);
        CHECK(mt.contains(g));
        CHECK(mt.at(g).is_object());
    }
    CHECK(mt.at("utc_timestamp_ms").is_number_integer());
}
