#include "api/routes.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace ember::api;
using nlohmann::json;

namespace {
Response as_error(const std::variant<Action, Response>& r) {
    REQUIRE(std::holds_alternative<Response>(r));
    return std::get<Response>(r);
}
std::string fault(const std::variant<Action, Response>& r) {
    const Response resp = as_error(r);
    CHECK(resp.status == 400);
    return json::parse(resp.body).at("fault_message").get<std::string>();
}
// Returns a reference into `r`: keep the routed result alive while using it.
template <class T>
const T& as(const std::variant<Action, Response>& r) {
    REQUIRE(std::holds_alternative<Action>(r));
    const Action& a = std::get<Action>(r);
    REQUIRE(std::holds_alternative<T>(a));
    return std::get<T>(a);
}
} // namespace

TEST_CASE("routes: GET endpoints") {
    as<GetInstanceInfo>(route("GET", "/", ""));
    as<GetVersion>(route("GET", "/version", ""));
    as<GetMachineConfig>(route("GET", "/machine-config", ""));
    as<GetVmConfig>(route("GET", "/vm/config", ""));
    as<GetInstanceInfo>(route("GET", "/?x=1", "")); // the query string is ignored
}

TEST_CASE("routes: actions") {
    as<InstanceStart>(route("PUT", "/actions", R"({"action_type": "InstanceStart"})"));
    as<SendCtrlAltDel>(route("PUT", "/actions", R"({"action_type": "SendCtrlAltDel"})"));
    as<FlushMetrics>(route("PUT", "/actions", R"({"action_type": "FlushMetrics"})"));
    CHECK_THAT(fault(route("PUT", "/actions", R"({"action_type": "Reboot"})")), Catch::Contains("unknown action_type"));
    CHECK_THAT(fault(route("PUT", "/actions", R"({})")), Catch::Contains("missing required field \"action_type\""));
    CHECK_THAT(fault(route("PUT", "/actions", R"({"action_type": 1})")), Catch::Contains("must be a string"));
    CHECK_THAT(fault(route("PUT", "/actions", R"({"action_type": "InstanceStart", "x": 1})")), Catch::Contains("unknown field \"x\""));
    CHECK_THAT(fault(route("PUT", "/actions", "")), Catch::Contains("needs a JSON body"));
    CHECK_THAT(fault(route("PUT", "/actions", "{")), Catch::Contains("not valid JSON"));
    CHECK_THAT(fault(route("PUT", "/actions", "[]")), Catch::Contains("JSON object"));
    CHECK_THAT(fault(route("GET", "/actions", "")), Catch::Contains("Invalid request method and/or path"));
}

TEST_CASE("routes: vm state") {
    CHECK(as<PatchVmState>(route("PATCH", "/vm", R"({"state": "Paused"})")).pause);
    CHECK_FALSE(as<PatchVmState>(route("PATCH", "/vm", R"({"state": "Resumed"})")).pause);
    CHECK_THAT(fault(route("PATCH", "/vm", R"({"state": "Stopped"})")), Catch::Contains("unknown vm state"));
    CHECK_THAT(fault(route("PUT", "/vm", R"({"state": "Paused"})")), Catch::Contains("Invalid request"));
}

TEST_CASE("routes: machine-config and boot-source bodies") {
    CHECK(as<PutMachineConfig>(route("PUT", "/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 64})")).body.at("vcpu_count") == 2);
    CHECK(as<PatchMachineConfig>(route("PATCH", "/machine-config", R"({"mem_size_mib": 64})")).body.size() == 1);
    CHECK_THAT(fault(route("PATCH", "/machine-config", "{}")), Catch::Contains("empty PATCH"));
    const auto routed = route("PUT", "/boot-source", R"({"kernel_image_path": "/k", "boot_args": "x"})");
    const auto& b = as<PutBootSource>(routed);
    CHECK(b.config.kernel_image_path == "/k");
    CHECK(b.config.boot_args == "x");
    CHECK_FALSE(b.config.initrd_path);
    CHECK_THAT(fault(route("PUT", "/boot-source", R"({"boot_args": "x"})")), Catch::Contains("kernel_image_path"));
    CHECK_THAT(fault(route("PUT", "/boot-source", R"({"kernel_image_path": "/k", "extra": 1})")), Catch::Contains("unknown field"));
}

TEST_CASE("routes: logger and metrics") {
    const auto routed = route("PUT", "/logger", R"({"log_path": "/l", "level": "Debug", "show_level": true})");
    const auto& l = as<PutLogger>(routed);
    CHECK(l.config.log_path == "/l");
    CHECK(l.config.level == "Debug");
    CHECK(l.config.show_level == true);
    CHECK_FALSE(l.config.show_log_origin);
    CHECK_THAT(fault(route("PUT", "/logger", R"({"show_level": "yes"})")), Catch::Contains("true or false"));
    CHECK(as<PutMetrics>(route("PUT", "/metrics", R"({"metrics_path": "/m"})")).metrics_path == "/m");
    CHECK_THAT(fault(route("PUT", "/metrics", R"({})")), Catch::Contains("metrics_path"));
}

TEST_CASE("routes: devices that do not exist yet are refused by name, never with 204") {
    CHECK_THAT(fault(route("PUT", "/drives/bad id", R"({})")), Catch::Contains("invalid drive id"));
    CHECK_THAT(fault(route("PUT", "/drives/", R"({})")), Catch::Contains("invalid drive id"));
    for (const char* p : {"/mmds", "/pmem/x"})
        CHECK_THAT(fault(route("PUT", p, "{}")), Catch::Contains("not supported"));
}

TEST_CASE("routes: snapshot create and load take Firecracker 1.16's bodies") {
    const auto c = as<CreateSnapshot>(route("PUT", "/snapshot/create", R"({"snapshot_path": "/s", "mem_file_path": "/m"})")).params;
    CHECK(c == ember::SnapshotCreateParams{"/s", "/m", false});
    CHECK(as<CreateSnapshot>(route("PUT", "/snapshot/create", R"({"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"})"))
              .params.diff);
    CHECK_THAT(fault(route("PUT", "/snapshot/create", R"({"snapshot_type": "Half", "snapshot_path": "/s", "mem_file_path": "/m"})")),
               Catch::Contains("Full or Diff"));
    CHECK_THAT(fault(route("PUT", "/snapshot/create", R"({"snapshot_path": "/s"})")), Catch::Contains("mem_file_path"));
    CHECK_THAT(fault(route("PUT", "/snapshot/create", R"({"snapshot_path": "/s", "mem_file_path": "/m", "version": "1"})")),
               Catch::Contains("version"));
    CHECK_THAT(fault(route("PATCH", "/snapshot/create", R"({})")), Catch::Contains("PATCH"));
    CHECK_THAT(fault(route("PUT", "/snapshot/other", R"({})")), !Catch::Contains("not supported"));

    const auto l = as<LoadSnapshot>(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_backend": {"backend_type": "File",
        "backend_path": "/m"}, "resume_vm": true, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap9"}],
        "vsock_override": {"uds_path": "/v.sock"}, "track_dirty_pages": false})")).params;
    CHECK(l.snapshot_path == "/s");
    CHECK(l.backend == ember::MemBackend::File);
    CHECK(l.backend_path == "/m");
    CHECK(l.resume_vm);
    CHECK_FALSE(l.mem_file_path_used);
    REQUIRE(l.network_overrides.size() == 1);
    CHECK(l.network_overrides[0].second == "tap9");
    CHECK(l.vsock_uds_path == std::optional<std::string>("/v.sock"));
    // The deprecated aliases.
    const auto old = as<LoadSnapshot>(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m",
        "enable_diff_snapshots": true})")).params;
    CHECK(old.backend_path == "/m");
    CHECK(old.mem_file_path_used);
    CHECK(old.track_dirty_pages);
    CHECK(as<LoadSnapshot>(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd",
        "backend_path": "/uffd.sock"}})")).params.backend == ember::MemBackend::Uffd);
    // Firecracker's messages for the memory fields.
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s"})")),
               Catch::Contains("missing field: either `mem_backend` or `mem_file_path` is required"));
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend":
        {"backend_type": "File", "backend_path": "/m"}})")), Catch::Contains("too many fields"));
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_backend": {"backend_path": "/m"}})")),
               Catch::Contains("backend_type"));
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"mem_file_path": "/m"})")), Catch::Contains("snapshot_path"));
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m", "resume_vm": "yes"})")),
               Catch::Contains("true or false"));
    CHECK_THAT(fault(route("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m",
        "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "a", "host_dev_name": "u"}]})")),
               Catch::Contains("twice"));
}

TEST_CASE("routes: drives") {
    const auto put = route("PUT", "/drives/rootfs",
                           R"({"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false})");
    const auto& d = as<PutDrive>(put);
    CHECK(d.config.drive_id == "rootfs");
    CHECK(d.config.path_on_host == "/r.ext4");
    CHECK(d.config.is_root_device);
    CHECK_THAT(fault(route("PUT", "/drives/other", R"({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true})")),
               Catch::Contains("does not match"));
    CHECK_THAT(fault(route("PUT", "/drives/rootfs", R"({})")), Catch::Contains("drive_id"));
    CHECK_THAT(fault(route("PUT", "/drives/rootfs", "")), Catch::Contains("JSON body"));
    const auto patch = route("PATCH", "/drives/scratch", R"({"drive_id": "scratch", "path_on_host": "/new.img"})");
    const auto& p = as<PatchDrive>(patch);
    CHECK(p.drive_id == "scratch");
    CHECK(p.path_on_host == "/new.img");
    const auto patch_rl = route("PATCH", "/drives/scratch", R"({"drive_id": "scratch", "rate_limiter": null})");
    CHECK_FALSE(as<PatchDrive>(patch_rl).path_on_host);
    CHECK_THAT(fault(route("PATCH", "/drives/scratch", R"({"drive_id": "x"})")), Catch::Contains("does not match"));
    CHECK_THAT(fault(route("PATCH", "/drives/scratch", R"({"drive_id": "scratch", "is_read_only": true})")),
               Catch::Contains("unknown field \"is_read_only\""));
    CHECK_FALSE(as<PatchDrive>(patch_rl).rate_limiter);
    CHECK_THAT(fault(route("PATCH", "/drives/scratch", R"({"drive_id": "scratch", "rate_limiter": {"bandwidth": {}}})")),
               Catch::Contains("drive scratch.rate_limiter.bandwidth: missing required field \"size\""));
    CHECK_THAT(fault(route("PATCH", "/drives/scratch", R"({"drive_id": "scratch", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "x": 1}}})")),
               Catch::Contains("unknown field \"x\""));
    // Firecracker's RateLimiterUpdate: an absent or null bucket stays, a zero one is removed.
    const auto patch_upd = route("PATCH", "/drives/scratch",
                                 R"({"drive_id": "scratch", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}, "ops": null}})");
    const auto& upd = as<PatchDrive>(patch_upd);
    REQUIRE(upd.rate_limiter);
    REQUIRE(upd.rate_limiter->bandwidth);
    CHECK_FALSE(upd.rate_limiter->bandwidth->limits());
    CHECK_FALSE(upd.rate_limiter->ops);
    CHECK_THAT(fault(route("GET", "/drives/scratch", "")), Catch::Contains("Invalid request method"));
}

TEST_CASE("routes: network interfaces") {
    const auto put = route("PUT", "/network-interfaces/eth0",
                           R"({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02", "mtu": 9000})");
    const auto& n = as<PutNet>(put);
    CHECK(n.config.host_dev_name == "tap0");
    REQUIRE(n.config.guest_mac);
    CHECK(n.config.guest_mac->to_string() == "06:00:ac:10:00:02"); // rendered in lower case, as Firecracker does
    CHECK(n.config.mtu == 9000);
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth1", R"({"iface_id": "eth0", "host_dev_name": "tap0"})")),
               Catch::Contains("does not match"));
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0"})")), Catch::Contains("host_dev_name"));
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "01:00:00:00:00:01"})")),
               Catch::Contains("unicast MAC"));
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"})")),
               Catch::Contains("guest_mac"));
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 67})")),
               Catch::Contains("mtu must be from 68 to 65535"));
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "a_name_too_long_for_linux"})")),
               Catch::Contains("1-15 characters"));
    const auto put_rl = route("PUT", "/network-interfaces/eth0",
                              R"({"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {},
                                  "tx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 10}, "ops": {"size": 5, "one_time_burst": 7, "refill_time": 20}}})");
    const auto& rl = as<PutNet>(put_rl).config;
    CHECK_FALSE(rl.rx_rate_limiter); // a RateLimiter with no bucket limits nothing
    REQUIRE(rl.tx_rate_limiter);
    CHECK(rl.tx_rate_limiter->bandwidth == ember::TokenBucketConfig{1000, 0, 10});
    CHECK(rl.tx_rate_limiter->ops == ember::TokenBucketConfig{5, 7, 20});
    CHECK_THAT(fault(route("PUT", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {"ops": {"size": 1.5, "refill_time": 1}}})")),
               Catch::Contains("network interface eth0.rx_rate_limiter.ops.size must be a non-negative integer"));
    const auto patch_net = route("PATCH", "/network-interfaces/eth0", R"({"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}})");
    const auto& pn = as<PatchNet>(patch_net);
    CHECK(pn.iface_id == "eth0");
    CHECK_FALSE(pn.rx_rate_limiter.bandwidth);
    CHECK_FALSE(pn.rx_rate_limiter.ops);
    CHECK_FALSE(pn.tx_rate_limiter.bandwidth);
    CHECK(pn.tx_rate_limiter.ops == ember::TokenBucketConfig{10, 0, 1000});
    as<PatchNet>(route("PATCH", "/network-interfaces/eth0", R"({"iface_id": "eth0"})"));
    CHECK_THAT(fault(route("PATCH", "/network-interfaces/eth0", R"({"iface_id": "eth1"})")), Catch::Contains("does not match"));
    CHECK_THAT(fault(route("PATCH", "/network-interfaces/eth0", R"({"iface_id": "eth0", "host_dev_name": "tap1"})")),
               Catch::Contains("unknown field \"host_dev_name\""));
    CHECK_THAT(fault(route("PATCH", "/network-interfaces/eth0", R"({"iface_id": "eth0", "rx_rate_limiter": []})")),
               Catch::Contains("rx_rate_limiter must be a JSON object or null"));
    CHECK_THAT(fault(route("GET", "/network-interfaces/eth0", "")), Catch::Contains("Invalid request method"));
}

TEST_CASE("routes: serial and console") {
    CHECK(as<PutSerial>(route("PUT", "/serial", R"({"serial_out_path": "/tmp/s.out"})")).serial_out_path == "/tmp/s.out");
    CHECK_FALSE(as<PutSerial>(route("PUT", "/serial", R"({})")).serial_out_path.has_value());
    CHECK_FALSE(as<PutSerial>(route("PUT", "/serial", R"({"serial_out_path": null})")).serial_out_path.has_value());
    CHECK_THAT(fault(route("PUT", "/serial", R"({"serial_out_path": ""})")), Catch::Contains("must not be empty"));
    CHECK_THAT(fault(route("PUT", "/serial", R"({"serial_out_path": 3})")), Catch::Contains("serial.serial_out_path"));
    CHECK_THAT(fault(route("PUT", "/serial", R"({"serial_out_path": "/x", "rate_limiter": {}})")), Catch::Contains("serial.rate_limiter: missing required field \"size\""));
    const auto serial_rl = route("PUT", "/serial", R"({"rate_limiter": {"size": 100, "refill_time": 1000}})");
    CHECK(as<PutSerial>(serial_rl).rate_limiter == ember::TokenBucketConfig{100, 0, 1000});
    CHECK_THAT(fault(route("PUT", "/serial", R"({"path": "/x"})")), Catch::Contains("unknown field \"path\""));
    CHECK_THAT(fault(route("PUT", "/serial", "[]")), Catch::Contains("object"));
    CHECK_THAT(fault(route("PATCH", "/serial", R"({})")), Catch::Contains("Invalid request method"));
    CHECK(as<PutConsole>(route("PUT", "/console", R"({"device": "virtio"})")).device == ember::ConsoleDevice::Virtio);
    CHECK(as<PutConsole>(route("PUT", "/console", R"({"device": "serial"})")).device == ember::ConsoleDevice::Serial);
    CHECK_THAT(fault(route("PUT", "/console", R"({"device": "Virtio"})")), Catch::Contains("must be \"serial\" or \"virtio\""));
    CHECK_THAT(fault(route("PUT", "/console", R"({})")), Catch::Contains("missing required field \"device\""));
    CHECK_THAT(fault(route("GET", "/console", "")), Catch::Contains("Invalid request method"));
}

TEST_CASE("routes: unknown paths and methods") {
    CHECK_THAT(fault(route("GET", "/nope", "")), Catch::Contains("GET /nope"));
    CHECK_THAT(fault(route("DELETE", "/", "")), Catch::Contains("Invalid request method"));
    CHECK_THAT(fault(route("POST", "/actions", "{}")), Catch::Contains("Invalid request method"));
    CHECK_THAT(fault(route("GET", "", "")), Catch::Contains("Invalid request"));
}

TEST_CASE("responses never throw on invalid UTF-8") {
    const Response r = Response::bad_request(std::string("bad \xff\xfe bytes"));
    CHECK(r.status == 400);
    CHECK(json::parse(r.body).contains("fault_message"));
    CHECK_NOTHROW(Response::ok_json(json{{"path", std::string("\xc3\x28")}}));
    // A body that is not UTF-8 is a 400, not an exception.
    CHECK(as_error(route("PUT", "/actions", std::string("{\"action_type\": \"\xff\"}"))).status == 400);
}

TEST_CASE("routes: PUT /vsock") {
    const auto put = route("PUT", "/vsock", R"({"vsock_id": "agent_api", "guest_cid": 7, "uds_path": "/run/v.sock"})");
    const auto& v = as<PutVsock>(put);
    CHECK(v.config.guest_cid == 7);
    CHECK(v.config.uds_path == "/run/v.sock");
    CHECK(v.config.vsock_id == std::optional<std::string>("agent_api"));
    CHECK(as<PutVsock>(route("PUT", "/vsock", R"({"guest_cid": 3, "uds_path": "/v"})")).config.vsock_id == std::nullopt);
    CHECK_THAT(fault(route("PUT", "/vsock", R"({"guest_cid": 1, "uds_path": "/v"})")), Catch::Contains("guest_cid"));
    CHECK_THAT(fault(route("PUT", "/vsock", R"({"guest_cid": 3})")), Catch::Contains("uds_path"));
    CHECK_THAT(fault(route("PUT", "/vsock", R"({"guest_cid": 3, "uds_path": "/v", "cid": 3})")), Catch::Contains("unknown field"));
    CHECK_THAT(fault(route("PUT", "/vsock", "[]")), Catch::Contains("vsock"));
    CHECK(fault(route("PATCH", "/vsock", R"({"guest_cid": 3, "uds_path": "/v"})")).size() > 0);
}
