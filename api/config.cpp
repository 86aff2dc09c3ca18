#include "api/config.hpp"

#include "api/cpu_config.hpp"
#include "api/balloon_config.hpp"
#include "api/entropy_config.hpp"
#include "api/rate_limiter_config.hpp"

#include "vmm/base/error.hpp"

#include <cctype>
#include <fstream>
#include <iterator>
#include <set>
#include <string_view>
#include <utility>
#include <vector>
#include <unistd.h>

namespace ember {
namespace {

using nlohmann::json;

std::string type_name(const json& v) {
    if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
    if (v.is_number_float()) return "a number with a fraction";
    return std::string("a ") + v.type_name();
}

void require_object(const json& j, const std::string& where) {
    if (!j.is_object()) throw ConfigError(where + " must be a JSON object, not " + type_name(j));
}


const json* field(const json& j, const char* name) {
    auto it = j.find(name);
    return it == j.end() ? nullptr : &*it;
}

std::string get_string(const json& v, const std::string& where) {
    if (!v.is_string()) throw ConfigError(where + " must be a string, not " + type_name(v));
    return v.get<std::string>();
}

bool get_bool(const json& v, const std::string& where) {
    if (!v.is_boolean()) throw ConfigError(where + " must be true or false, not " + type_name(v));
    return v.get<bool>();
}

std::uint64_t get_uint(const json& v, const std::string& where) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
        throw ConfigError(where + " must be a non-negative integer, not " +
                          (v.is_number_integer() ? std::string("negative") : type_name(v)));
    return v.get<std::uint64_t>();
}

// Every section of Firecracker 1.16's --config-file (VmmConfig), plus Ember's "serial" (which
// Firecracker's VmmConfig skips) and "console".
const std::set<std::string>& config_file_sections() {
    static const std::set<std::string> names = {"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config",
                                                "metrics", "mmds-config", "network-interfaces", "vsock", "entropy", "pmem",
                                                "memory-hotplug", "serial", "console"};
    return names;
}

// Sections for devices Ember does not have yet, and what is missing. `null` (and [] for the
// "pmem" list) is accepted as absent; anything else is refused.
const std::vector<std::pair<const char*, const char*>>& unsupported_config_sections() {
    static const std::vector<std::pair<const char*, const char*>> v = {
        {"mmds-config", "MMDS"},
        {"pmem", "virtio-pmem device"}, {"memory-hotplug", "memory hotplug (virtio-mem)"}};
    return v;
}

// The config file's "cpu-config": Firecracker's is the path of a template file; Ember also
// takes the template inline (the shape GET /vm/config returns).
CustomCpuTemplate parse_cpu_config_section(const json& v) {
    if (v.is_object()) return parse_cpu_config(v);
    const std::string path = get_string(v, "cpu-config");
    std::ifstream f(path);
    if (!f) throw ConfigError("cpu-config: cannot read the CPU template file " + path);
    std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    try {
        return parse_cpu_config_text(text);
    } catch (const ConfigError& e) {
        throw ConfigError("cpu-config " + path + ": " + e.what());
    }
}

} // namespace

void reject_unknown(const json& j, const std::string& where, std::initializer_list<const char*> known) {
    for (auto it = j.begin(); it != j.end(); ++it) {
        bool ok = false;
        for (const char* k : known) ok = ok || it.key() == k;
        if (!ok) throw ConfigError(where + ": unknown field \"" + it.key() + "\"");
    }
}

BootSourceConfig parse_boot_source(const json& j) {
    const std::string w = "boot-source";
    require_object(j, w);
    reject_unknown(j, w, {"kernel_image_path", "initrd_path", "boot_args"});
    BootSourceConfig b;
    const json* k = field(j, "kernel_image_path");
    if (!k) throw ConfigError(w + ": missing required field \"kernel_image_path\"");
    b.kernel_image_path = get_string(*k, w + ".kernel_image_path");
    if (b.kernel_image_path.empty()) throw ConfigError(w + ".kernel_image_path must not be empty");
    if (const json* i = field(j, "initrd_path"); i && !i->is_null()) b.initrd_path = get_string(*i, w + ".initrd_path");
    if (const json* a = field(j, "boot_args"); a && !a->is_null()) b.boot_args = get_string(*a, w + ".boot_args");
    return b;
}

MachineConfig parse_machine_config(const json& j, std::uint64_t host_mem_mib) {
    const std::string w = "machine-config";
    require_object(j, w);
    reject_unknown(j, w, {"vcpu_count", "mem_size_mib", "smt", "track_dirty_pages", "huge_pages", "cpu_template"});
    MachineConfig m;
    const json* v = field(j, "vcpu_count");
    const json* mem = field(j, "mem_size_mib");
    if (!v) throw ConfigError(w + ": missing required field \"vcpu_count\"");
    if (!mem) throw ConfigError(w + ": missing required field \"mem_size_mib\"");
    const std::uint64_t vcpus = get_uint(*v, w + ".vcpu_count");
    if (vcpus < 1 || vcpus > MAX_VCPUS)
        throw ConfigError(w + ".vcpu_count must be from 1 to " + std::to_string(MAX_VCPUS) + ", not " + std::to_string(vcpus));
    m.vcpu_count = static_cast<unsigned>(vcpus);
    m.mem_size_mib = get_uint(*mem, w + ".mem_size_mib");
    if (m.mem_size_mib == 0) throw ConfigError(w + ".mem_size_mib must be at least 1");
    if (m.mem_size_mib > host_mem_mib)
        throw ConfigError(w + ".mem_size_mib " + std::to_string(m.mem_size_mib) + " is more than this host's " +
                          std::to_string(host_mem_mib) + " MiB of memory");
    if (const json* s = field(j, "smt")) m.smt = get_bool(*s, w + ".smt");
    if (m.smt && m.vcpu_count > 1 && m.vcpu_count % 2 != 0)
        throw ConfigError(w + ": with smt enabled, vcpu_count must be 1 or even");
    if (const json* t = field(j, "track_dirty_pages")) m.track_dirty_pages = get_bool(*t, w + ".track_dirty_pages");
    if (const json* h = field(j, "huge_pages")) {
        m.huge_pages = get_string(*h, w + ".huge_pages");
        if (m.huge_pages != "None") throw ConfigError(w + ".huge_pages \"" + m.huge_pages + "\" is not supported yet (only \"None\")");
    }
    // Absent or null leaves the caller's template in place (Controller keeps it, as Firecracker's
    // MachineConfigUpdate); "None" clears it.
    if (const json* c = field(j, "cpu_template"); c && !c->is_null()) {
        if (auto t = parse_static_cpu_template(get_string(*c, w + ".cpu_template"), w + ".cpu_template")) m.cpu_template = *t;
    }
    return m;
}

bool valid_resource_id(const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    for (char ch : id)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '_') return false;
    return true;
}

DriveConfig parse_drive(const json& j) {
    std::string w = "drive";
    require_object(j, w);
    reject_unknown(j, w, {"drive_id", "partuuid", "is_root_device", "cache_type", "is_read_only", "path_on_host",
                          "rate_limiter", "io_engine", "socket"});
    DriveConfig d;
    const json* id = field(j, "drive_id");
    if (!id) throw ConfigError(w + ": missing required field \"drive_id\"");
    d.drive_id = get_string(*id, w + ".drive_id");
    if (!valid_resource_id(d.drive_id))
        throw ConfigError(w + ".drive_id \"" + d.drive_id + "\" must be 1-64 characters from [a-zA-Z0-9_]");
    w = "drive " + d.drive_id;
    const json* root = field(j, "is_root_device");
    if (!root) throw ConfigError(w + ": missing required field \"is_root_device\"");
    d.is_root_device = get_bool(*root, w + ".is_root_device");
    if (const json* s = field(j, "socket"); s && !s->is_null())
        throw ConfigError(w + ": vhost-user block devices (\"socket\") are not supported by Ember");
    const json* path = field(j, "path_on_host");
    if (!path) throw ConfigError(w + ": missing required field \"path_on_host\"");
    d.path_on_host = get_string(*path, w + ".path_on_host");
    if (d.path_on_host.empty()) throw ConfigError(w + ".path_on_host must not be empty");
    if (const json* ro = field(j, "is_read_only"); ro && !ro->is_null()) d.is_read_only = get_bool(*ro, w + ".is_read_only");
    if (const json* pu = field(j, "partuuid"); pu && !pu->is_null()) d.partuuid = get_string(*pu, w + ".partuuid");
    if (const json* c = field(j, "cache_type")) { // CacheType has a serde default, so null is refused
        const std::string t = get_string(*c, w + ".cache_type");
        if (t == "Unsafe") d.cache_type = DriveCacheType::Unsafe;
        else if (t == "Writeback") d.cache_type = DriveCacheType::Writeback;
        else throw ConfigError(w + ".cache_type \"" + t + "\" is not Unsafe or Writeback");
    }
    if (const json* e = field(j, "io_engine"); e && !e->is_null()) {
        const std::string t = get_string(*e, w + ".io_engine");
        if (t == "Sync") d.io_engine = DriveIoEngine::Sync;
        else if (t == "Async") d.io_engine = DriveIoEngine::Async;
        else throw ConfigError(w + ".io_engine \"" + t + "\" is not Sync or Async");
    }
    if (const json* r = field(j, "rate_limiter")) d.rate_limiter = parse_rate_limiter(*r, w + ".rate_limiter");
    return d;
}

NetConfig parse_net(const json& j) {
    std::string w = "network-interface";
    require_object(j, w);
    reject_unknown(j, w, {"iface_id", "host_dev_name", "guest_mac", "mtu", "rx_rate_limiter", "tx_rate_limiter"});
    NetConfig n;
    const json* id = field(j, "iface_id");
    if (!id) throw ConfigError(w + ": missing required field \"iface_id\"");
    n.iface_id = get_string(*id, w + ".iface_id");
    if (!valid_resource_id(n.iface_id))
        throw ConfigError(w + ".iface_id \"" + n.iface_id + "\" must be 1-64 characters from [a-zA-Z0-9_]");
    w = "network interface " + n.iface_id;
    const json* dev = field(j, "host_dev_name");
    if (!dev) throw ConfigError(w + ": missing required field \"host_dev_name\"");
    n.host_dev_name = get_string(*dev, w + ".host_dev_name");
    if (n.host_dev_name.empty() || n.host_dev_name.size() > 15)
        throw ConfigError(w + ".host_dev_name must be 1-15 characters (a Linux interface name)");
    if (const json* m = field(j, "guest_mac"); m && !m->is_null()) {
        const std::string text = get_string(*m, w + ".guest_mac");
        n.guest_mac = MacAddr::parse(text);
        if (!n.guest_mac) throw ConfigError(w + ".guest_mac \"" + text + "\" is not a unicast MAC address like 06:00:ac:10:00:02");
    }
    if (const json* m = field(j, "mtu"); m && !m->is_null()) {
        const std::uint64_t mtu = get_uint(*m, w + ".mtu");
        if (mtu < 68 || mtu > 65535) throw ConfigError(w + ".mtu must be from 68 to 65535, not " + std::to_string(mtu));
        n.mtu = static_cast<std::uint16_t>(mtu);
    }
    if (const json* r = field(j, "rx_rate_limiter")) n.rx_rate_limiter = parse_rate_limiter(*r, w + ".rx_rate_limiter");
    if (const json* r = field(j, "tx_rate_limiter")) n.tx_rate_limiter = parse_rate_limiter(*r, w + ".tx_rate_limiter");
    return n;
}

void add_net(std::vector<NetConfig>& nets, NetConfig n) {
    for (const auto& o : nets) {
        if (o.iface_id == n.iface_id) continue;
        if (o.host_dev_name == n.host_dev_name)
            throw ConfigError("The host device name " + n.host_dev_name + " is already in use (interface " + o.iface_id + ")");
        if (n.guest_mac && o.guest_mac == n.guest_mac)
            throw ConfigError("The guest MAC address " + n.guest_mac->to_string() + " is already in use (interface " + o.iface_id + ")");
    }
    for (auto& o : nets)
        if (o.iface_id == n.iface_id) {
            o = std::move(n);
            return;
        }
    nets.push_back(std::move(n));
}

void add_drive(std::vector<DriveConfig>& drives, DriveConfig d) {
    for (const auto& o : drives)
        if (o.is_root_device && d.is_root_device && o.drive_id != d.drive_id)
            throw ConfigError("A root block device already exists! (drive " + o.drive_id + ")");
    for (auto& o : drives)
        if (o.drive_id == d.drive_id) {
            o = std::move(d);
            return;
        }
    drives.push_back(std::move(d));
}

LoggerConfig parse_logger(const json& j) {
    const std::string w = "logger";
    require_object(j, w);
    reject_unknown(j, w, {"log_path", "level", "show_level", "show_log_origin", "module"});
    LoggerConfig c;
    if (const json* p = field(j, "log_path"); p && !p->is_null()) c.log_path = get_string(*p, w + ".log_path");
    if (const json* l = field(j, "level"); l && !l->is_null()) c.level = get_string(*l, w + ".level");
    if (const json* m = field(j, "module"); m && !m->is_null()) c.module = get_string(*m, w + ".module");
    if (const json* b = field(j, "show_level"); b && !b->is_null()) c.show_level = get_bool(*b, w + ".show_level");
    if (const json* b = field(j, "show_log_origin"); b && !b->is_null()) c.show_log_origin = get_bool(*b, w + ".show_log_origin");
    return c;
}

std::string parse_metrics(const json& j) {
    require_object(j, "metrics");
    reject_unknown(j, "metrics", {"metrics_path"});
    const json* p = field(j, "metrics_path");
    if (!p) throw ConfigError("metrics: missing required field \"metrics_path\"");
    std::string path = get_string(*p, "metrics.metrics_path");
    if (path.empty()) throw ConfigError("metrics.metrics_path must not be empty");
    return path;
}

std::optional<std::string> parse_serial(const json& j) {
    require_object(j, "serial");
    reject_unknown(j, "serial", {"serial_out_path", "rate_limiter"});
    (void)parse_serial_rate_limiter(j); // validated here; read with parse_serial_rate_limiter()
    const json* p = field(j, "serial_out_path");
    if (!p || p->is_null()) return std::nullopt;
    std::string path = get_string(*p, "serial.serial_out_path");
    if (path.empty()) throw ConfigError("serial.serial_out_path must not be empty");
    return path;
}

ConsoleDevice parse_console(const json& j) {
    require_object(j, "console");
    reject_unknown(j, "console", {"device"});
    const json* d = field(j, "device");
    if (!d) throw ConfigError("console: missing required field \"device\"");
    const std::string v = get_string(*d, "console.device");
    if (v == "serial") return ConsoleDevice::Serial;
    if (v == "virtio") return ConsoleDevice::Virtio;
    throw ConfigError("console.device must be \"serial\" or \"virtio\", not \"" + v + "\"");
}

const char* to_string(ConsoleDevice d) noexcept { return d == ConsoleDevice::Virtio ? "virtio" : "serial"; }

VsockConfig parse_vsock(const json& j) {
    require_object(j, "vsock");
    reject_unknown(j, "vsock", {"vsock_id", "guest_cid", "uds_path"});
    VsockConfig v;
    if (const json* id = field(j, "vsock_id"); id && !id->is_null()) v.vsock_id = get_string(*id, "vsock.vsock_id");
    const json* cid = field(j, "guest_cid");
    if (!cid) throw ConfigError("vsock: missing required field \"guest_cid\"");
    v.guest_cid = get_uint(*cid, "vsock.guest_cid");
    // Firecracker's guest_cid is a u32; 0-2 are reserved (virtio 1.2 §5.10.4), as is 2^32-1 (VMADDR_CID_ANY).
    if (v.guest_cid < 3 || v.guest_cid > 0xfffffffeu)
        throw ConfigError("vsock.guest_cid must be from 3 to 4294967294, not " + std::to_string(v.guest_cid));
    const json* uds = field(j, "uds_path");
    if (!uds) throw ConfigError("vsock: missing required field \"uds_path\"");
    v.uds_path = get_string(*uds, "vsock.uds_path");
    // sockaddr_un.sun_path holds 107 bytes and a NUL; guest-initiated connections add "_<port>".
    if (v.uds_path.empty() || v.uds_path.size() > 107)
        throw ConfigError("vsock.uds_path must be 1-107 bytes (a unix socket path), not " + std::to_string(v.uds_path.size()));
    return v;
}

json to_json(const VsockConfig& v) {
    json j = {{"guest_cid", v.guest_cid}, {"uds_path", v.uds_path}};
    if (v.vsock_id) j["vsock_id"] = *v.vsock_id;
    return j;
}

VmConfig parse_config_file(const std::string& text, std::uint64_t host_mem_mib) {
    return parse_config_document(text, host_mem_mib).vm;
}

ConfigFile parse_config_document(const std::string& text, std::uint64_t host_mem_mib) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        // parse_error, and out_of_range for numbers that overflow a double (found by fuzzing).
        throw ConfigError(std::string("config file is not valid JSON: ") + e.what());
    }
    require_object(j, "config file");
    // Firecracker 1.16's VmmConfig (vmm/src/resources.rs) does not deny unknown fields, so a key
    // it does not know is ignored; its Option<...> sections take null as absent. Ember also takes
    // a missing or null "drives", "network-interfaces" or "pmem" as [] (Firecracker requires
    // "drives" and refuses null lists).
    ConfigFile doc;
    VmConfig& c = doc.vm;
    auto section = [&j](const char* name) -> const json* {
        auto it = j.find(name);
        return it == j.end() || it->is_null() ? nullptr : &*it;
    };
    auto list = [&section](const char* name) -> const json* {
        const json* s = section(name);
        if (s && !s->is_array()) throw ConfigError(std::string(name) + " must be a JSON array, not " + type_name(*s));
        return s;
    };
    for (auto it = j.begin(); it != j.end(); ++it)
        if (!config_file_sections().count(it.key())) doc.ignored_sections.push_back(it.key());
    // Firecracker's own order: logger, metrics, machine-config, cpu-config, boot-source, drives,
    // network interfaces, then the other devices.
    if (const json* s = section("logger")) doc.logger = parse_logger(*s);
    if (const json* s = section("metrics")) doc.metrics_path = parse_metrics(*s);
    if (const json* s = section("machine-config")) c.machine = parse_machine_config(*s, host_mem_mib);
    std::optional<CustomCpuTemplate> custom_template;
    if (const json* s = section("cpu-config")) custom_template = parse_cpu_config_section(*s);
    const auto bs = j.find("boot-source");
    if (bs == j.end()) throw ConfigError("config file: missing required section \"boot-source\"");
    c.boot_source = parse_boot_source(*bs);
    if (const json* drives = list("drives"))
        for (const auto& d : *drives) {
            DriveConfig dc = parse_drive(d);
            for (const auto& o : c.drives)
                if (o.drive_id == dc.drive_id) throw ConfigError("drives: drive id \"" + dc.drive_id + "\" is used twice");
            add_drive(c.drives, std::move(dc));
        }
    if (const json* nets = list("network-interfaces"))
        for (const auto& n : *nets) {
            NetConfig nc = parse_net(n);
            for (const auto& o : c.net)
                if (o.iface_id == nc.iface_id) throw ConfigError("network-interfaces: iface_id \"" + nc.iface_id + "\" is used twice");
            add_net(c.net, std::move(nc));
        }
    (void)list("pmem");
    for (const auto& [name, device] : unsupported_config_sections())
        if (const json* s = section(name); s && !(std::string_view(name) == "pmem" && s->is_array() && s->empty()))
            throw ConfigError(std::string("config file section \"") + name + "\" is not supported yet: Ember has no " + device);
    if (const json* s = section("vsock")) c.vsock = parse_vsock(*s);
    if (const json* s = section("serial")) {
        c.console.serial_out_path = parse_serial(*s);
        c.console.serial_rate_limiter = parse_serial_rate_limiter(*s);
    }
    if (const json* s = section("console")) c.console.device = parse_console(*s);
    if (const json* s = section("entropy")) c.entropy = parse_entropy(*s);
    if (const json* s = section("balloon")) c.balloon = parse_balloon(*s);
    // Firecracker applies cpu-config after machine-config (VmResources::from_json): it wins.
    if (custom_template) c.machine.cpu_template = std::move(*custom_template);
    return doc;
}

json to_json(const BootSourceConfig& b) {
    // Firecracker's BootSourceConfig: initrd_path always (null when unset), boot_args only when set.
    json j = {{"kernel_image_path", b.kernel_image_path}, {"initrd_path", b.initrd_path ? json(*b.initrd_path) : json(nullptr)}};
    if (b.boot_args) j["boot_args"] = *b.boot_args;
    return j;
}

json to_json(const MachineConfig& m) {
    json j = {{"vcpu_count", m.vcpu_count},
            {"mem_size_mib", m.mem_size_mib},
            {"smt", m.smt},
            {"track_dirty_pages", m.track_dirty_pages},
            {"huge_pages", m.huge_pages}};
    // Firecracker shows cpu_template only for a static template (MachineConfig's skip_serializing_if).
    if (const auto* t = std::get_if<StaticCpuTemplate>(&m.cpu_template)) j["cpu_template"] = to_string(*t);
    return j;
}

json to_json(const DriveConfig& d) {
    return {{"drive_id", d.drive_id},
            {"partuuid", d.partuuid ? json(*d.partuuid) : json(nullptr)},
            {"is_root_device", d.is_root_device},
            {"cache_type", d.cache_type == DriveCacheType::Writeback ? "Writeback" : "Unsafe"},
            {"is_read_only", d.is_read_only},
            {"path_on_host", d.path_on_host},
            {"rate_limiter", to_json(d.rate_limiter)},
            {"io_engine", d.io_engine == DriveIoEngine::Sync ? "Sync" : "Async"},
            {"socket", nullptr}};
}

json to_json(const NetConfig& n) {
    return {{"iface_id", n.iface_id},
            {"host_dev_name", n.host_dev_name},
            {"guest_mac", n.guest_mac ? json(n.guest_mac->to_string()) : json(nullptr)},
            {"mtu", n.mtu ? json(*n.mtu) : json(nullptr)},
            {"rx_rate_limiter", to_json(n.rx_rate_limiter)},
            {"tx_rate_limiter", to_json(n.tx_rate_limiter)}};
}

json to_json(const VmConfig& c) {
    // Firecracker 1.16's GET /vm/config (VmmConfig serialised from VmResources): every section,
    // null for an absent device; logger, metrics and cpu-config are always null there; a
    // boot-source never set is Firecracker's default {"kernel_image_path": "", "initrd_path": null}.
    json j = json::object();
    j["balloon"] = c.balloon ? to_json(*c.balloon) : json(nullptr);
    j["drives"] = json::array();
    for (const auto& d : c.drives) j["drives"].push_back(to_json(d));
    j["boot-source"] = c.boot_source ? to_json(*c.boot_source) : json{{"kernel_image_path", ""}, {"initrd_path", nullptr}};
    j["cpu-config"] = nullptr;
    j["logger"] = nullptr;
    j["machine-config"] = to_json(c.machine);
    j["metrics"] = nullptr;
    j["mmds-config"] = nullptr;
    j["network-interfaces"] = json::array();
    for (const auto& n : c.net) j["network-interfaces"].push_back(to_json(n));
    j["vsock"] = c.vsock ? to_json(*c.vsock) : json(nullptr);
    j["entropy"] = c.entropy ? to_json(*c.entropy) : json(nullptr);
    j["pmem"] = json::array();
    j["memory-hotplug"] = nullptr;
    // Ember's additions, shown only when set: the serial output and its limiter (Firecracker keeps
    // serial out of this document) and the console device when it differs from Firecracker's.
    if (c.console.serial_out_path || c.console.serial_rate_limiter)
        j["serial"] = {{"serial_out_path", c.console.serial_out_path ? json(*c.console.serial_out_path) : json(nullptr)},
                       {"rate_limiter", c.console.serial_rate_limiter ? to_json(*c.console.serial_rate_limiter) : json(nullptr)}};
    if (c.console.device != ConsoleDevice::Serial) j["console"] = {{"device", to_string(c.console.device)}};
    // Ember's: the custom template inline (Firecracker returns no cpu-config; its config file names
    // a template file, which Ember's accepts too).
    if (const auto* t = std::get_if<CustomCpuTemplate>(&c.machine.cpu_template)) j["cpu-config"] = to_json(*t);
    return j;
}

std::uint64_t host_memory_mib() {
    std::ifstream f("/proc/meminfo");
    std::string key;
    std::uint64_t kib = 0;
    while (f >> key >> kib) {
        if (key == "MemTotal:") return kib / 1024;
        f.ignore(256, '\n');
    }
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page) >> 20 : 0;
}

} // namespace ember
