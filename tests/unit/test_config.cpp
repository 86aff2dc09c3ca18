// Firecracker --config-file parsing (api/config.hpp) and log level names (vmm/base/logger.hpp).

#include "test_util.hpp"

#include "api/config.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

using namespace ember;
using nlohmann::json;

namespace {

constexpr std::uint64_t HOST_MIB = 4096;

const char* const VALID = R"({
  "boot-source": {
    "kernel_image_path": "/var/lib/ember/vmlinux",
    "initrd_path": "/var/lib/ember/initrd.cpio",
    "boot_args": "console=ttyS0 reboot=k panic=1"
  },
  "machine-config": {
    "vcpu_count": 2,
    "mem_size_mib": 256,
    "smt": false,
    "track_dirty_pages": true,
    "huge_pages": "None",
    "cpu_template": "None"
  },
  "drives": []
})";

// A valid document with machine-config's `field` set to the JSON text `value`.
std::string with_machine(const std::string& field, const std::string& value) {
    json j = json::parse(VALID);
    j["machine-config"][field] = json::parse(value);
    return j.dump();
}

std::string with_boot(const std::string& field, const std::string& value) {
    json j = json::parse(VALID);
    j["boot-source"][field] = json::parse(value);
    return j.dump();
}

VmConfig parse(const std::string& s, std::uint64_t host = HOST_MIB) { return parse_config_file(s, host); }

} // namespace

TEST_CASE("config: a full document parses into every field") {
    const VmConfig c = parse(VALID);
    REQUIRE(c.boot_source);
    CHECK(c.boot_source->kernel_image_path == "/var/lib/ember/vmlinux");
    CHECK(c.boot_source->initrd_path == "/var/lib/ember/initrd.cpio");
    CHECK(c.boot_source->boot_args == "console=ttyS0 reboot=k panic=1");
    CHECK(c.machine.vcpu_count == 2);
    CHECK(c.machine.mem_size_mib == 256);
    CHECK_FALSE(c.machine.smt);
    CHECK(c.machine.track_dirty_pages);
    CHECK(c.machine.huge_pages == "None");
}

TEST_CASE("config: optional fields and sections take their defaults") {
    const VmConfig c = parse(R"({"boot-source": {"kernel_image_path": "vmlinux"}})");
    REQUIRE(c.boot_source);
    CHECK(c.boot_source->kernel_image_path == "vmlinux");
    CHECK_FALSE(c.boot_source->initrd_path);
    CHECK_FALSE(c.boot_source->boot_args);
    CHECK(c.machine.vcpu_count == 1);
    CHECK(c.machine.mem_size_mib == 128);
    CHECK_FALSE(c.machine.smt);
    CHECK_FALSE(c.machine.track_dirty_pages);
    CHECK(c.machine.huge_pages == "None");

    // null means "not given" for the optional strings.
    const VmConfig n = parse(R"({"boot-source": {"kernel_image_path": "k", "initrd_path": null, "boot_args": null},
                                 "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": null}})");
    CHECK_FALSE(n.boot_source->initrd_path);
    CHECK_FALSE(n.boot_source->boot_args);
    CHECK(n.machine.mem_size_mib == 64);
}

TEST_CASE("config: machine-config limits that are valid") {
    CHECK(parse(with_machine("vcpu_count", "32")).machine.vcpu_count == 32);
    CHECK(parse(with_machine("vcpu_count", "1")).machine.vcpu_count == 1);
    CHECK(parse(with_machine("mem_size_mib", "4096")).machine.mem_size_mib == 4096); // == host
    json j = json::parse(VALID);
    j["machine-config"]["smt"] = true;
    j["machine-config"]["vcpu_count"] = 4;
    CHECK(parse(j.dump()).machine.smt);
    j["machine-config"]["vcpu_count"] = 1;
    CHECK(parse(j.dump()).machine.smt);
}

TEST_CASE("config: document-level errors") {
    CHECK_CONFIG_ERROR(parse("{\"boot-source\": "), "not valid JSON");
    CHECK_CONFIG_ERROR(parse(""), "not valid JSON");
    CHECK_CONFIG_ERROR(parse(R"([{"boot-source": {}}])"), "JSON object");
    CHECK_CONFIG_ERROR(parse(R"("boot-source")"), "JSON object");
    {
        // Firecracker's VmmConfig does not deny unknown fields: a key it does not know is ignored
        // (and Ember reports it in ignored_sections, which the controller logs as a warning).
        json j = json::parse(VALID);
        j["bogus-section"] = json::object();
        j["mmds-version"] = "V1"; // in older Firecracker example configs
        const ConfigFile doc = parse_config_document(j.dump(), HOST_MIB);
        CHECK(doc.ignored_sections == std::vector<std::string>{"bogus-section", "mmds-version"});
        CHECK(doc.vm.machine.vcpu_count == 2);
        CHECK(parse_config_document(VALID, HOST_MIB).ignored_sections.empty());
    }
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": null})"), "boot-source must be a JSON object");
    CHECK_CONFIG_ERROR(parse(R"({"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}})"), "boot-source");
    CHECK_CONFIG_ERROR(parse("{}"), "boot-source");
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": ["vmlinux"]})"), "boot-source");
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": {"kernel_image_path": "k"}, "machine-config": 3})"), "machine-config");
}

TEST_CASE("config: unknown fields are rejected by name") {
    CHECK_CONFIG_ERROR(parse(with_machine("vcpus", "2")), "vcpus");
    CHECK_CONFIG_ERROR(parse(with_machine("vcpus", "2")), "machine-config");
    CHECK_CONFIG_ERROR(parse(with_boot("kernel", "\"x\"")), "kernel");
    CHECK_CONFIG_ERROR(parse(with_boot("kernel", "\"x\"")), "boot-source");
}

TEST_CASE("config: boot-source field errors") {
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": {"boot_args": "x"}})"), "kernel_image_path");
    CHECK_CONFIG_ERROR(parse(with_boot("kernel_image_path", "\"\"")), "kernel_image_path");
    CHECK_CONFIG_ERROR(parse(with_boot("kernel_image_path", "5")), "kernel_image_path");
    CHECK_CONFIG_ERROR(parse(with_boot("kernel_image_path", "null")), "kernel_image_path");
    CHECK_CONFIG_ERROR(parse(with_boot("initrd_path", "[]")), "initrd_path");
    CHECK_CONFIG_ERROR(parse(with_boot("boot_args", "false")), "boot_args");
}

TEST_CASE("config: vcpu_count errors") {
    const std::string bad = GENERATE(as<std::string>{}, "0", "33", "\"two\"", "2.5", "-1", "2.0", "true", "null", "18446744073709551615");
    CAPTURE(bad);
    CHECK_CONFIG_ERROR(parse(with_machine("vcpu_count", bad)), "vcpu_count");
}

TEST_CASE("config: vcpu_count and mem_size_mib are required in machine-config") {
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": {"kernel_image_path": "k"}, "machine-config": {"mem_size_mib": 128}})"),
                       "vcpu_count");
    CHECK_CONFIG_ERROR(parse(R"({"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpu_count": 1}})"),
                       "mem_size_mib");
}

TEST_CASE("config: mem_size_mib errors") {
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "0")), "mem_size_mib");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "4097")), "mem_size_mib");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "4097")), "4096 MiB");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "256"), 128), "mem_size_mib");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "\"256\"")), "mem_size_mib");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "-128")), "mem_size_mib");
    CHECK_CONFIG_ERROR(parse(with_machine("mem_size_mib", "128.5")), "mem_size_mib");
}

TEST_CASE("config: smt, huge_pages, cpu_template and track_dirty_pages errors") {
    CHECK_CONFIG_ERROR(parse(with_machine("smt", "1")), "smt");
    CHECK_CONFIG_ERROR(parse(with_machine("smt", "\"true\"")), "smt");
    {
        json j = json::parse(VALID);
        j["machine-config"]["smt"] = true;
        j["machine-config"]["vcpu_count"] = 3;
        CHECK_CONFIG_ERROR(parse(j.dump()), "smt");
        CHECK_CONFIG_ERROR(parse(j.dump()), "vcpu_count");
    }
    CHECK_CONFIG_ERROR(parse(with_machine("huge_pages", "\"2M\"")), "huge_pages");
    CHECK_CONFIG_ERROR(parse(with_machine("huge_pages", "null")), "huge_pages");
    CHECK_CONFIG_ERROR(parse(with_machine("cpu_template", "\"V1N1\"")), "cpu_template");
    CHECK_CONFIG_ERROR(parse(with_machine("cpu_template", "\"V1N1\"")), "aarch64");
    CHECK_CONFIG_ERROR(parse(with_machine("cpu_template", "\"t2\"")), "unknown variant");
    CHECK_CONFIG_ERROR(parse(with_machine("cpu_template", "7")), "cpu_template");
    CHECK_CONFIG_ERROR(parse(with_machine("track_dirty_pages", "\"yes\"")), "track_dirty_pages");
}

TEST_CASE("config: drives parse with Firecracker's fields and defaults") {
    json j = json::parse(VALID);
    j["drives"] = json::parse(R"([{"drive_id": "data", "path_on_host": "data.img", "is_root_device": false, "is_read_only": true,
                                   "cache_type": "Writeback", "io_engine": "Sync", "rate_limiter": null, "socket": null},
                                  {"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true,
                                   "partuuid": "0eaa91a0-01"}])");
    const VmConfig c = parse(j.dump());
    REQUIRE(c.drives.size() == 2);
    CHECK(c.drives[0].drive_id == "data");
    CHECK(c.drives[0].is_read_only);
    CHECK(c.drives[0].cache_type == DriveCacheType::Writeback);
    CHECK(c.drives[0].io_engine == DriveIoEngine::Sync);
    CHECK(c.drives[1].is_root_device);
    CHECK_FALSE(c.drives[1].is_read_only);
    CHECK(c.drives[1].partuuid == "0eaa91a0-01");
    CHECK(c.drives[1].cache_type == DriveCacheType::Unsafe); // Firecracker's default
    CHECK(c.drives[1].io_engine == DriveIoEngine::Async);    // Ember's default (Firecracker: Sync)
    // Round trip through GET /vm/config's shape.
    const json out = to_json(c);
    CHECK(out["drives"][0]["cache_type"] == "Writeback");
    CHECK(out["drives"][1]["partuuid"] == "0eaa91a0-01");
    CHECK(out["drives"][0]["rate_limiter"].is_null());
    const VmConfig again = parse(out.dump());
    REQUIRE(again.drives.size() == 2);
    CHECK(again.drives[1].partuuid == c.drives[1].partuuid);
    CHECK(again.drives[0].io_engine == c.drives[0].io_engine);
}

TEST_CASE("config: bad drives are refused with the field named") {
    auto with_drives = [](const std::string& drives) {
        json j = json::parse(VALID);
        j["drives"] = json::parse(drives);
        return j.dump();
    };
    CHECK_CONFIG_ERROR(parse(with_drives("{}")), "drives must be a JSON array");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"path_on_host": "x", "is_root_device": false}])")), "drive_id");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x"}])")), "is_root_device");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "is_root_device": false}])")), "path_on_host");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "", "is_root_device": false}])")), "must not be empty");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a/b", "path_on_host": "x", "is_root_device": false}])")), "1-64 characters");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": "yes"}])")), "is_root_device");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "cache_type": "None"}])")), "cache_type");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "io_engine": 1}])")), "io_engine");
    // CacheType has a serde default in Firecracker, so null is a type error there too.
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "cache_type": null}])")), "cache_type");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "socket": "/s", "is_root_device": false}])")), "vhost-user");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "rate_limiter": {"ops": {"size": 1}}}])")),
                       "drive a.rate_limiter.ops: missing required field \"refill_time\"");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "rate_limiter": 5}])")),
                       "drive a.rate_limiter must be a JSON object or null");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false, "bogus": 1}])")), "unknown field \"bogus\"");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": true},
                                             {"drive_id": "b", "path_on_host": "y", "is_root_device": true}])")), "root block device already exists");
    CHECK_CONFIG_ERROR(parse(with_drives(R"([{"drive_id": "a", "path_on_host": "x", "is_root_device": false},
                                             {"drive_id": "a", "path_on_host": "y", "is_root_device": false}])")), "used twice");
}

TEST_CASE("config: network interfaces") {
    json j = json::parse(VALID);
    j["network-interfaces"] = json::parse(R"([{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"},
                                              {"iface_id": "eth1", "host_dev_name": "tap1", "mtu": 9000}])");
    const VmConfig c = parse(j.dump());
    REQUIRE(c.net.size() == 2);
    REQUIRE(c.net[0].guest_mac);
    CHECK(c.net[0].guest_mac->to_string() == "06:00:ac:10:00:02");
    CHECK_FALSE(c.net[0].mtu);
    CHECK(c.net[1].mtu == 9000);
    const json out = to_json(c);
    CHECK(out["network-interfaces"][1]["host_dev_name"] == "tap1");
    CHECK(out["network-interfaces"][0]["mtu"].is_null());
    CHECK(parse(out.dump()).net.size() == 2);
    j["network-interfaces"][1]["host_dev_name"] = "tap0";
    CHECK_CONFIG_ERROR(parse(j.dump()), "already in use");
    j["network-interfaces"][1]["host_dev_name"] = "tap1";
    j["network-interfaces"][1]["guest_mac"] = "06:00:ac:10:00:02";
    CHECK_CONFIG_ERROR(parse(j.dump()), "guest MAC address 06:00:ac:10:00:02 is already in use");
    j["network-interfaces"][1]["iface_id"] = "eth0";
    CHECK_CONFIG_ERROR(parse(j.dump()), "used twice");
}

TEST_CASE("config: add_drive replaces a drive with the same id, as PUT /drives does") {
    std::vector<DriveConfig> drives;
    DriveConfig a{"a", "a.img", true, false, std::nullopt, DriveCacheType::Unsafe, DriveIoEngine::Async, std::nullopt};
    add_drive(drives, a);
    a.path_on_host = "other.img";
    add_drive(drives, a);
    REQUIRE(drives.size() == 1);
    CHECK(drives[0].path_on_host == "other.img");
    DriveConfig b{"b", "b.img", true, false, std::nullopt, DriveCacheType::Unsafe, DriveIoEngine::Async, std::nullopt};
    CHECK_CONFIG_ERROR(add_drive(drives, b), "root block device already exists");
    CHECK(drives.size() == 1);
}

TEST_CASE("config: logger and metrics sections; sections not supported yet") {
    json j = json::parse(VALID);
    j["logger"] = json::parse(R"({"log_path": "/tmp/l.log", "level": "Debug", "show_level": true, "show_log_origin": false})");
    j["metrics"] = json::parse(R"({"metrics_path": "/tmp/m.json"})");
    const ConfigFile doc = parse_config_document(j.dump(), HOST_MIB);
    REQUIRE(doc.logger);
    CHECK(doc.logger->log_path == "/tmp/l.log");
    CHECK(doc.logger->level == "Debug");
    CHECK(doc.logger->show_level == true);
    CHECK(doc.metrics_path == "/tmp/m.json");
    j["metrics"] = json::parse(R"({"path": "/tmp/m.json"})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "metrics: unknown field \"path\"");
    j["metrics"] = json::parse(R"({})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "metrics_path");
    j.erase("metrics");
    j["logger"] = json::parse(R"({"show_level": 1})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "logger.show_level");

    for (const char* section : {"mmds-config"}) {
        CAPTURE(section);
        json k = json::parse(VALID);
        k[section] = json::array();
        CHECK_CONFIG_ERROR(parse(k.dump()), section);
        CHECK_CONFIG_ERROR(parse(k.dump()), "not supported");
    }
    // An empty drives array, as Firecracker's examples carry, is fine; so is leaving it out.
    CHECK_NOTHROW(parse(VALID));
    json k = json::parse(VALID);
    k.erase("drives");
    CHECK_NOTHROW(parse(k.dump()));
}

TEST_CASE("config: serial and console sections") {
    CHECK(parse(VALID).console.device == ConsoleDevice::Serial);
    CHECK_FALSE(parse(VALID).console.serial_out_path);
    json j = json::parse(VALID);
    j["serial"] = json::parse(R"({"serial_out_path": "/tmp/s.out"})");
    j["console"] = json::parse(R"({"device": "virtio"})");
    const VmConfig c = parse(j.dump());
    CHECK(c.console.serial_out_path == "/tmp/s.out");
    CHECK(c.console.device == ConsoleDevice::Virtio);
    // Rendered back: Firecracker's serial section, and Ember's console section only when it
    // differs from Firecracker's behaviour.
    const json r = to_json(c);
    CHECK(r.at("serial").at("serial_out_path") == "/tmp/s.out");
    CHECK(r.at("console").at("device") == "virtio");
    CHECK(parse(r.dump()).console.device == ConsoleDevice::Virtio);
    CHECK_FALSE(to_json(parse(VALID)).contains("console"));
    CHECK_FALSE(to_json(parse(VALID)).contains("serial"));
    j["serial"] = nullptr;
    j["console"] = nullptr;
    CHECK_FALSE(parse(j.dump()).console.serial_out_path);
    j["console"] = json::parse(R"({"device": "hvc"})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "console.device must be");
    j["console"] = json::parse(R"({"device": "virtio", "ports": 2})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "console: unknown field \"ports\"");
    j["console"] = json::parse(R"({"device": 1})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "console.device");
    j.erase("console");
    // Firecracker 1.16: the serial rate_limiter is a bare TokenBucket.
    j["serial"] = json::parse(R"({"serial_out_path": "/x", "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "serial.rate_limiter: unknown field \"bandwidth\"");
    j["serial"] = json::parse(R"({"serial_out_path": "/x", "rate_limiter": {"size": 64, "one_time_burst": 4096, "refill_time": 100}})");
    const VmConfig limited = parse(j.dump());
    REQUIRE(limited.console.serial_rate_limiter);
    CHECK(*limited.console.serial_rate_limiter == TokenBucketConfig{64, 4096, 100});
    CHECK(to_json(limited)["serial"]["rate_limiter"] == json::parse(R"({"size": 64, "one_time_burst": 4096, "refill_time": 100})"));
    j["serial"] = json::parse(R"({"rate_limiter": {"size": 0, "refill_time": 100}})"); // limits nothing
    CHECK_FALSE(parse(j.dump()).console.serial_rate_limiter);
    j["serial"] = json::parse(R"({"serial_out_path": ""})");
    CHECK_CONFIG_ERROR(parse(j.dump()), "must not be empty");
}

TEST_CASE("config: to_json round-trips through text") {
    const std::string doc = GENERATE(std::string(VALID), std::string(R"({"boot-source": {"kernel_image_path": "vmlinux"}})"),
                                     std::string(R"({"boot-source": {"kernel_image_path": "k", "boot_args": "a \"quoted\" arg"},
                                                     "machine-config": {"vcpu_count": 4, "mem_size_mib": 1024, "smt": true}})"));
    const VmConfig a = parse(doc);
    const std::string text = to_json(a).dump();
    const VmConfig b = parse(text);
    REQUIRE(b.boot_source);
    CHECK(b.boot_source->kernel_image_path == a.boot_source->kernel_image_path);
    CHECK(b.boot_source->initrd_path == a.boot_source->initrd_path);
    CHECK(b.boot_source->boot_args == a.boot_source->boot_args);
    CHECK(b.machine.vcpu_count == a.machine.vcpu_count);
    CHECK(b.machine.mem_size_mib == a.machine.mem_size_mib);
    CHECK(b.machine.smt == a.machine.smt);
    CHECK(b.machine.track_dirty_pages == a.machine.track_dirty_pages);
    CHECK(b.machine.huge_pages == a.machine.huge_pages);
    CHECK(to_json(b) == to_json(a));
    // The rendered document has Firecracker's shape.
    const json j = json::parse(text);
    CHECK(j.at("drives") == json::array());
    CHECK(j.at("machine-config").at("vcpu_count").is_number_unsigned());
    // Firecracker's BootSourceConfig: initrd_path is always there (null when unset), boot_args only when set.
    CHECK(to_json(*a.boot_source).at("initrd_path").is_null() == !a.boot_source->initrd_path.has_value());
    CHECK(to_json(*a.boot_source).contains("boot_args") == a.boot_source->boot_args.has_value());
}

TEST_CASE("config: the section parsers can be used on their own") {
    const BootSourceConfig b = parse_boot_source(json{{"kernel_image_path", "k"}, {"boot_args", "x"}});
    CHECK(b.boot_args == "x");
    const MachineConfig m = parse_machine_config(json{{"vcpu_count", 2}, {"mem_size_mib", 512}}, 1024);
    CHECK(m.vcpu_count == 2);
    CHECK(m.mem_size_mib == 512);
    CHECK_CONFIG_ERROR(parse_machine_config(json{{"vcpu_count", 2}, {"mem_size_mib", 2048}}, 1024), "mem_size_mib");
}

TEST_CASE("host_memory_mib reports this host's memory") {
    const std::uint64_t mib = host_memory_mib();
    CHECK(mib > 0);
    CHECK(mib < (std::uint64_t{1} << 32)); // < 4 PiB: a sane MiB count, not bytes or KiB
}

// ---------------------------------------------------------------------------------------------
// Logger level names

TEST_CASE("log level names are case-insensitive, with the Warn alias") {
    using ember::log::Level;
    using ember::log::parse_level;
    CHECK(parse_level("Error") == Level::Error);
    CHECK(parse_level("error") == Level::Error);
    CHECK(parse_level("ERROR") == Level::Error);
    CHECK(parse_level("Warning") == Level::Warning);
    CHECK(parse_level("Warn") == Level::Warning);
    CHECK(parse_level("WARN") == Level::Warning);
    CHECK(parse_level("info") == Level::Info);
    CHECK(parse_level("Debug") == Level::Debug);
    CHECK(parse_level("tRaCe") == Level::Trace);
    CHECK(parse_level("Off") == Level::Off);
    CHECK_FALSE(parse_level(""));
    CHECK_FALSE(parse_level("verbose"));
    CHECK_FALSE(parse_level("Warnings"));
    CHECK_FALSE(parse_level("Inf"));
    CHECK_FALSE(parse_level(" Info"));
    // A name followed by a NUL and more text (possible through JSON "\u0000") is not that name.
    CHECK_FALSE(parse_level(std::string("Info\0Debug", 10)));
    // Every level's name parses back to it.
    for (Level l : {Level::Off, Level::Error, Level::Warning, Level::Info, Level::Debug, Level::Trace})
        CHECK(parse_level(ember::log::level_name(l)) == l);
}

TEST_CASE("config: a number that overflows a double is a ConfigError, not a library exception") {
    // Found by the libFuzzer target: nlohmann throws out_of_range (406), not parse_error.
    CHECK_THROWS_AS(parse_config_file("[7666666666E6666]", 1024), ConfigError);
    CHECK_THROWS_AS(parse_config_file(R"({"machine-config": {"vcpu_count": 1e999, "mem_size_mib": 1}})", 1024), ConfigError);
}

// ---------------------------------------------------------------------------------------------
// Firecracker 1.16 parity: null sections, sections Ember lacks, GET /vm/config's shape

namespace {

// The shape of Firecracker's tests/framework/vm_config_network.json and of its GET /vm/config
// output (every section, null for absent devices), with this test's own values.
const char* const FIRECRACKER_SHAPED = R"({
  "boot-source": {"kernel_image_path": "guest/vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off", "initrd_path": null},
  "drives": [{"drive_id": "root", "path_on_host": "guest/root.ext4", "is_root_device": true, "partuuid": null,
              "is_read_only": false, "cache_type": "Unsafe", "io_engine": "Sync", "rate_limiter": null, "socket": null}],
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 512, "smt": false, "track_dirty_pages": false, "huge_pages": "None"},
  "cpu-config": null,
  "balloon": null,
  "network-interfaces": [{"iface_id": "net0", "host_dev_name": "tapvm0", "guest_mac": "06:00:0a:00:00:02",
                          "rx_rate_limiter": null, "tx_rate_limiter": null}],
  "vsock": null,
  "logger": null,
  "metrics": null,
  "mmds-config": null,
  "entropy": null,
  "pmem": [],
  "memory-hotplug": null
})";

} // namespace

TEST_CASE("config: a document shaped like Firecracker's example configs and GET /vm/config parses") {
    const ConfigFile doc = parse_config_document(FIRECRACKER_SHAPED, HOST_MIB);
    CHECK(doc.ignored_sections.empty());
    CHECK_FALSE(doc.logger);
    CHECK_FALSE(doc.metrics_path);
    REQUIRE(doc.vm.boot_source);
    CHECK_FALSE(doc.vm.boot_source->initrd_path);
    REQUIRE(doc.vm.drives.size() == 1);
    CHECK(doc.vm.drives[0].io_engine == DriveIoEngine::Sync);
    REQUIRE(doc.vm.net.size() == 1);
    CHECK(doc.vm.net[0].host_dev_name == "tapvm0");
    CHECK(doc.vm.machine.mem_size_mib == 512);
    // What Ember renders parses again, into the same document.
    const json out = to_json(doc.vm);
    CHECK(to_json(parse(out.dump())) == out);
}

TEST_CASE("config: null is absent for every optional section, as in Firecracker") {
    json j = json::parse(VALID);
    for (const char* k : {"machine-config", "logger", "metrics", "cpu-config", "balloon", "vsock", "mmds-config", "entropy",
                          "memory-hotplug", "serial", "console", "drives", "network-interfaces", "pmem"})
        j[k] = nullptr;
    const ConfigFile doc = parse_config_document(j.dump(), HOST_MIB);
    CHECK(doc.vm.machine.vcpu_count == 1); // machine-config: null keeps Firecracker's defaults (1 vCPU, 128 MiB)
    CHECK(doc.vm.machine.mem_size_mib == 128);
    CHECK_FALSE(doc.logger);
    CHECK_FALSE(doc.metrics_path);
    CHECK(doc.vm.drives.empty());
    CHECK(doc.vm.net.empty());
    CHECK_FALSE(doc.vm.console.serial_out_path);
    // Lists must still be lists when given.
    j["network-interfaces"] = json::object();
    CHECK_CONFIG_ERROR(parse(j.dump()), "network-interfaces must be a JSON array");
    j["network-interfaces"] = nullptr;
    j["pmem"] = "x";
    CHECK_CONFIG_ERROR(parse(j.dump()), "pmem must be a JSON array");
}

TEST_CASE("config: sections for devices Ember lacks are refused by name unless null") {
    const std::pair<const char*, const char*> cases[] = {
        {"mmds-config", R"({"network_interfaces": ["net0"]})"},
        {"pmem", R"([{"id": "p", "path_on_host": "/tmp/p", "root_device": false}])"},
        {"memory-hotplug", R"({"total_size_mib": 1024})"},
    };
    for (const auto& [section, body] : cases) {
        CAPTURE(section);
        json j = json::parse(VALID);
        j[section] = json::parse(body);
        CHECK_CONFIG_ERROR(parse(j.dump()), std::string("section \"") + section + "\" is not supported");
        j[section] = nullptr;
        CHECK_NOTHROW(parse(j.dump()));
    }
    json j = json::parse(VALID);
    j["pmem"] = json::array(); // an empty list is no device
    CHECK_NOTHROW(parse(j.dump()));
    j["vsock"] = json::array(); // not a Vsock object: Firecracker's serde refuses it too
    CHECK_CONFIG_ERROR(parse(j.dump()), "vsock");
}

TEST_CASE("config: to_json has every key of Firecracker's FullVmConfiguration") {
    const json out = to_json(parse(VALID));
    for (const char* k : {"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics", "mmds-config",
                          "network-interfaces", "vsock", "entropy", "pmem", "memory-hotplug"})
        CHECK(out.contains(k));
    for (const char* k : {"balloon", "cpu-config", "logger", "metrics", "mmds-config", "vsock", "entropy", "memory-hotplug"})
        CHECK(out.at(k).is_null());
    CHECK(out.at("pmem") == json::array());
    CHECK(out.at("network-interfaces") == json::array());
    const json& m = out.at("machine-config");
    for (const char* k : {"vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "huge_pages"}) CHECK(m.contains(k));
    // A VM whose boot source was never set shows Firecracker's default boot source.
    VmConfig none;
    CHECK(to_json(none).at("boot-source") == json{{"kernel_image_path", ""}, {"initrd_path", nullptr}});
    // Drives show every field with its default: Ember's io_engine default (Async) is visible.
    VmConfig withdrive = parse(VALID);
    withdrive.drives.push_back(DriveConfig{"d", "d.img", false, false, std::nullopt, DriveCacheType::Unsafe, DriveIoEngine::Async, std::nullopt});
    const json d = to_json(withdrive).at("drives").at(0);
    CHECK(d == json{{"drive_id", "d"}, {"partuuid", nullptr}, {"is_root_device", false}, {"cache_type", "Unsafe"},
                    {"is_read_only", false}, {"path_on_host", "d.img"}, {"rate_limiter", nullptr}, {"io_engine", "Async"},
                    {"socket", nullptr}});
}

TEST_CASE("config: the vsock section (Firecracker's Vsock) and its GET /vm/config shape") {
    json j = json::parse(VALID);
    j["vsock"] = json::parse(R"({"guest_cid": 3, "uds_path": "/tmp/v.sock"})");
    VmConfig c = parse(j.dump());
    REQUIRE(c.vsock);
    CHECK(c.vsock->guest_cid == 3);
    CHECK(c.vsock->uds_path == "/tmp/v.sock");
    CHECK_FALSE(c.vsock->vsock_id);
    CHECK(to_json(c)["vsock"] == json::parse(R"({"guest_cid": 3, "uds_path": "/tmp/v.sock"})"));
    j["vsock"]["vsock_id"] = "agent_api"; // deprecated, still accepted and shown
    c = parse(j.dump());
    CHECK(to_json(c)["vsock"]["vsock_id"] == "agent_api");
    for (const char* bad : {R"({"guest_cid": 2, "uds_path": "/tmp/v"})", R"({"guest_cid": 4294967295, "uds_path": "/tmp/v"})",
                            R"({"guest_cid": -3, "uds_path": "/tmp/v"})", R"({"uds_path": "/tmp/v"})", R"({"guest_cid": 3})",
                            R"({"guest_cid": 3, "uds_path": ""})", R"({"guest_cid": 3, "uds_path": "/tmp/v", "x": 1})",
                            R"({"guest_cid": "3", "uds_path": "/tmp/v"})"}) {
        CAPTURE(bad);
        j["vsock"] = json::parse(bad);
        CHECK_CONFIG_ERROR(parse(j.dump()), "vsock");
    }
    j["vsock"]["guest_cid"] = 3;
    j["vsock"]["uds_path"] = std::string(108, 'p');
    CHECK_CONFIG_ERROR(parse(j.dump()), "uds_path");
}
