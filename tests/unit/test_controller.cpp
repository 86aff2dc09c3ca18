// The controller without KVM: std::visit dispatch, the pre-boot/runtime phases, request metrics
// (Firecracker's <name>_count and <name>_fails), and a failed InstanceStart that changes nothing.

#include "api/controller.hpp"
#include "api/routes.hpp"
#include "vmm/base/logger.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>
#include <vector>

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

// A temporary file holding `text`, removed at scope exit.
struct TempFile {
    explicit TempFile(const std::string& text, mode_t mode = 0644) {
        char name[] = "/tmp/ember-controller-test.XXXXXX";
        const int fd = ::mkstemp(name);
        REQUIRE(fd >= 0);
        REQUIRE(::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()));
        REQUIRE(::fchmod(fd, mode) == 0);
        ::close(fd);
        path = name;
    }
    ~TempFile() { ::unlink(path.c_str()); }
    std::string path;
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
    TempFile kernel("not a kernel");
    CHECK(r.call("PUT", "/boot-source", json{{"kernel_image_path", kernel.path}}.dump()).status == 204);
    CHECK_THAT(fault(r.call("PUT", "/actions", R"({"action_type": "InstanceStart"})")), Catch::Contains(kernel.path));
    CHECK_FALSE(r.ctl->started());
    CHECK(r.call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128})").status == 204); // still pre-boot
    const json mt = r.metrics();
    CHECK(mt.at("put_api_requests").at("actions_count") == 2);
    CHECK(mt.at("put_api_requests").at("actions_fails") == 2);
}

TEST_CASE("controller: FlushMetrics before boot is refused, as in Firecracker") {
    Rig r;
    CHECK_THAT(fault(r.call("PUT", "/actions", R"({"action_type": "FlushMetrics"})")), Catch::Contains("before starting the microVM"));
    const json mt = r.metrics();
    CHECK(mt.at("put_api_requests").at("actions_count") == 1);
    CHECK(mt.at("put_api_requests").at("actions_fails") == 1);
    CHECK_FALSE(r.ctl->write_metrics()); // no metrics sink: nothing written, no error
}

TEST_CASE("controller: PUT /boot-source checks its files and command line when it arrives") {
    Rig r;
    TempFile kernel("kernel bytes"), initrd("initrd bytes");
    auto put = [&](const json& body) { return r.call("PUT", "/boot-source", body.dump()); };
    auto shown = [&] { return json::parse(r.call("GET", "/vm/config").body).at("boot-source"); };
    const json unset = shown();
    CHECK(unset == json{{"kernel_image_path", ""}, {"initrd_path", nullptr}}); // Firecracker's default

    CHECK_THAT(fault(put({{"kernel_image_path", "/nonexistent/vmlinux"}})),
               Catch::Contains("The kernel file cannot be opened: /nonexistent/vmlinux: No such file"));
    CHECK_THAT(fault(put({{"kernel_image_path", kernel.path}, {"initrd_path", "/nonexistent/initrd"}})),
               Catch::Contains("The initrd file cannot be opened") && Catch::Contains("/nonexistent/initrd"));
    CHECK_THAT(fault(put({{"kernel_image_path", kernel.path}, {"boot_args", "console=ttyS0\nquiet"}})),
               Catch::Contains("The kernel command line is invalid") && Catch::Contains("0x0a"));
    CHECK_THAT(fault(put({{"kernel_image_path", kernel.path}, {"boot_args", std::string(2048, 'a')}})),
               Catch::Contains("The kernel command line is invalid") && Catch::Contains("2048 bytes"));
    if (::geteuid() != 0) { // root reads any file
        TempFile unreadable("secret", 0000);
        CHECK_THAT(fault(put({{"kernel_image_path", unreadable.path}})), Catch::Contains("Permission denied"));
    }
    CHECK(shown() == unset); // every refusal left the configuration alone

    CHECK(put({{"kernel_image_path", kernel.path}, {"initrd_path", initrd.path}, {"boot_args", std::string(2047, 'a')}}).status == 204);
    const json b = shown();
    CHECK(b.at("kernel_image_path") == kernel.path);
    CHECK(b.at("initrd_path") == initrd.path);
    CHECK(r.metrics().at("put_api_requests").at("boot_source_fails") == 4 + (::geteuid() != 0 ? 1 : 0));
}

TEST_CASE("controller: GET /vm/config has Firecracker's full shape before boot") {
    Rig r;
    const json c = json::parse(r.call("GET", "/vm/config").body);
    for (const char* k : {"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics", "mmds-config",
                          "network-interfaces", "vsock", "entropy", "pmem", "memory-hotplug"})
        CHECK(c.contains(k));
    CHECK(c.at("machine-config") == json{{"vcpu_count", 1}, {"mem_size_mib", 128}, {"smt", false}, {"track_dirty_pages", false},
                                         {"huge_pages", "None"}});
    // The logger and metrics Ember writes to are not part of it (Firecracker always shows null).
    TempFile m("");
    CHECK(r.call("PUT", "/metrics", json{{"metrics_path", m.path}}.dump()).status == 204);
    CHECK(json::parse(r.call("GET", "/vm/config").body).at("metrics").is_null());
}

TEST_CASE("controller: PUT /logger changes only what it is given; the level defaults to Info") {
    const log::Options saved = log::current_options();
    Rig r;
    TempFile logfile("");
    CHECK(r.call("PUT", "/logger", json{{"log_path", logfile.path}, {"level", "Warning"}, {"show_level", true}, {"module", "api/"}}.dump())
              .status == 204);
    CHECK(r.call("PUT", "/logger", R"({"show_log_origin": true})").status == 204);
    log::Options o = log::current_options();
    CHECK(o.path == logfile.path); // Firecracker keeps the target when log_path is not given
    CHECK(o.show_level);
    CHECK(o.show_origin);
    CHECK(o.module == "api/");
    CHECK(o.level == log::Level::Info); // Firecracker: the given level or DEFAULT_LEVEL (Info)
    CHECK_THAT(fault(r.call("PUT", "/logger", R"({"level": "Loud"})")), Catch::Contains("Loud"));
    CHECK(log::current_options().path == logfile.path); // a refused update changes nothing
    log::configure(saved);
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

TEST_CASE("controller: snapshot create needs a VM; load refuses bad files and comes before boot configuration") {
    {
        Rig r;
        CHECK_THAT(fault(r.call("PUT", "/snapshot/create", R"({"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})")),
                   Catch::Contains("not supported before starting"));
        // A missing file, then a file that is not a snapshot: 400 naming it, nothing started.
        CHECK_THAT(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": "/nonexistent/s", "mem_file_path": "/tmp/m"})")),
                   Catch::Contains("cannot open snapshot file /nonexistent/s"));
        TempFile junk("not a snapshot at all");
        CHECK_THAT(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": ")" + junk.path + R"(", "mem_file_path": "/tmp/m"})")),
                   Catch::Contains("not an Ember snapshot file"));
        CHECK_THAT(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd",
            "backend_path": "/u"}})")), Catch::Contains("cannot open snapshot file /s"));
        CHECK_FALSE(r.ctl->started());
        CHECK(r.metrics()["put_api_requests"]["snapshot_load_fails"] == 3);
        // Still configurable and bootable-looking afterwards: the failed loads changed nothing.
        CHECK(r.call("PUT", "/machine-config", R"({"vcpu_count": 2, "mem_size_mib": 256})").status == 204);
    }
    TempFile kernel("not really a kernel");
    for (const auto& [path, body] : std::vector<std::pair<std::string, std::string>>{
             {"/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128})"},
             {"/boot-source", R"({"kernel_image_path": ")" + kernel.path + R"("})"},
             {"/entropy", "{}"}}) {
        Rig r;
        INFO(path);
        REQUIRE(r.call("PUT", path, body).status == 204);
        CHECK(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m"})")) ==
              "Loading a microVM snapshot not allowed after configuring boot-specific resources.");
    }
    {
        // As Firecracker, a boot resource counts even when its request failed...
        Rig r;
        CHECK(r.call("PUT", "/boot-source", R"({"kernel_image_path": "/nonexistent/vmlinux"})").status == 400);
        CHECK_THAT(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": "/s", "mem_file_path": "/m"})")),
                   Catch::Contains("not allowed after configuring boot-specific resources"));
    }
    {
        // ... and a custom CPU template is not one.
        Rig r;
        REQUIRE(r.call("PUT", "/cpu-config", R"({"cpuid_modifiers": []})").status == 204);
        CHECK_THAT(fault(r.call("PUT", "/snapshot/load", R"({"snapshot_path": "/nonexistent/s", "mem_file_path": "/m"})")),
                   Catch::Contains("cannot open snapshot file"));
    }
}
