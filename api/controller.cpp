#include "api/controller.hpp"

#include "api/boot_source_check.hpp"
#include "api/config.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/net/backend.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/vsock/backend.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/base/output_file.hpp"
#include "vmm/builder.hpp"
#include "vmm/drives.hpp"
#include "vmm/snapshot_file.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string_view>
#include <type_traits>
#include <fcntl.h>
#include <unistd.h>


namespace ember::api {
namespace {
using nlohmann::json;
constexpr auto kMetricsPeriod = std::chrono::seconds(60);
const char* kNotAfterBoot = "The requested operation is not supported after starting the microVM.";
const char* kNotBeforeBoot = "The requested operation is not supported before starting the microVM.";
} // namespace

Controller::Controller(boost::asio::io_context& io, std::string instance_id, RunOptions opts, std::uint64_t host_mem_mib,
                       std::function<void(int, const std::string&)> on_vm_exit)
    : io_(io), id_(std::move(instance_id)), opts_(std::move(opts)), host_mem_mib_(host_mem_mib),
      on_vm_exit_(std::move(on_vm_exit)), metrics_timer_(io) {}

Controller::~Controller() = default;

void Controller::count(const std::string& group, const std::string& name, std::uint64_t n) { counters_[group][name] += n; }

void Controller::count_rejected(const std::string& method, const std::string& target) {
    const Method m = method_of(method);
    const std::string path = target.substr(0, target.find('?'));
    std::string what;
    if (path == "/machine-config") what = "machine_cfg";
    else if (path == "/boot-source") what = "boot_source";
    else if (path == "/actions") what = "actions";
    else if (path == "/logger") what = "logger";
    else if (path == "/metrics") what = "metrics";
    else if (path.rfind("/drives/", 0) == 0) what = "drive";
    else if (path.rfind("/network-interfaces/", 0) == 0) what = "network";
    else if (path == "/vm") what = "vm";
    else if (path == "/serial") what = "serial";
    else if (path == "/console") what = "console";
    else if (path == "/cpu-config") what = "cpu_cfg";
    else if (path == "/entropy") what = "entropy";
    else if (path == "/vsock") what = "vsock";
    else if (path.rfind("/balloon", 0) == 0) what = "balloon";
    if (what.empty()) return;
    if (m == Method::Put) count("put_api_requests", what + "_fails");
    if (m == Method::Patch) count("patch_api_requests", what + "_fails");
}

namespace {
template <class A>
constexpr bool kBootResource = std::is_same_v<A, PutMachineConfig> || std::is_same_v<A, PatchMachineConfig> ||
                               std::is_same_v<A, PutBootSource> || std::is_same_v<A, PutDrive> || std::is_same_v<A, PutNet> ||
                               std::is_same_v<A, PutEntropy> || std::is_same_v<A, PutVsock>;

// Firecracker's PrebootApiController sets boot_path for these before it runs them, whether they
// succeed or not (rpc_interface.rs); PUT /balloon is one of them, a custom CPU template is not.
bool is_boot_resource(const Action& a) {
    if (const auto* b = std::get_if<BalloonRequest>(&a)) return b->kind == BalloonRequest::Kind::Put;
    return std::visit([](const auto& act) { return kBootResource<std::decay_t<decltype(act)>>; }, a);
}

const char* request_group(Method m) {
    switch (m) {
    case Method::Get: return "get_api_requests";
    case Method::Patch: return "patch_api_requests";
    default: return "put_api_requests";
    }
}
} // namespace

Response Controller::handle(const Action& a) {
    const std::string name = action_name(a);
    const char* group = request_group(action_method(a));
    // Firecracker counts every request as <name>_count, except these two.
    if (!std::holds_alternative<GetVmConfig>(a) && !std::holds_alternative<PatchVmState>(a)) count(group, name + "_count");
    if (!vm_ && is_boot_resource(a)) boot_configured_ = true;
    auto dispatch = [this](const auto& act) -> Response {
        if constexpr (requires { this->pre_boot(act); }) {
            if (vm_) return Response::bad_request(kNotAfterBoot);
            return pre_boot(act);
        } else if constexpr (requires { this->runtime(act); }) {
            if (!vm_) return Response::bad_request(kNotBeforeBoot);
            return runtime(act);
        } else {
            return any_time(act); // an action with no handler at all does not compile
        }
    };
    Response r;
    try {
        r = std::visit(dispatch, a);
    } catch (const std::exception& e) {
        // Only configuration parsing throws here; the state above is unchanged when it does.
        r = Response::bad_request(e.what());
    }
    if (r.status >= 400) count(group, name + "_fails");
    return r;
}

Response Controller::any_time(const GetInstanceInfo&) {
    const char* state = !vm_ ? "Not started" : (vm_->paused() ? "Paused" : "Running");
    return Response::ok_json({{"app_name", "Ember"}, {"id", id_}, {"state", state}, {"vmm_version", EMBER_VERSION}});
}

Response Controller::any_time(const GetVersion&) { return Response::ok_json({{"firecracker_version", EMBER_VERSION}}); }

Response Controller::any_time(const GetMachineConfig&) { return Response::ok_json(to_json(cfg_.machine)); }

VmConfig Controller::shown_config() const {
    VmConfig shown = cfg_;
    // After boot, each drive as its device runs it: io_engine is Sync where io_uring was unavailable.
    if (vm_)
        for (auto& d : shown.drives)
            if (auto blk = vm_->devices().find<virtio::block::BlockDevice>(d.drive_id)) d.io_engine = blk->config().io_engine;
    return shown;
}

Response Controller::any_time(const GetVmConfig&) { return Response::ok_json(to_json(shown_config())); }

namespace {
// A request without cpu_template (or with null) keeps the current template, static or custom
// (Firecracker's MachineConfigUpdate).
MachineConfig keep_cpu_template(MachineConfig m, const json& body, const MachineConfig& old) {
    auto it = body.find("cpu_template");
    if (it == body.end() || it->is_null()) m.cpu_template = old.cpu_template;
    return m;
}
} // namespace

Response Controller::pre_boot(const PutMachineConfig& p) {
    cfg_.machine = keep_cpu_template(parse_machine_config(p.body, host_mem_mib_), p.body, cfg_.machine);
    return Response::no_content();
}

Response Controller::pre_boot(const PatchMachineConfig& p) {
    json merged = to_json(cfg_.machine);
    for (auto it = p.body.begin(); it != p.body.end(); ++it) merged[it.key()] = it.value();
    cfg_.machine = keep_cpu_template(parse_machine_config(merged, host_mem_mib_), p.body, cfg_.machine);
    return Response::no_content();
}

Response Controller::pre_boot(const PutCpuConfig& p) {
    cfg_.machine.cpu_template = p.config; // replaces a static cpu_template, as Firecracker's
    return Response::no_content();
}

Response Controller::pre_boot(const PutBootSource& p) {
    check_boot_source(p.config); // as Firecracker's BootConfig::new: the files must open now
    cfg_.boot_source = p.config;
    return Response::no_content();
}

Response Controller::pre_boot(const PutDrive& p) {
    // Firecracker opens the image at PUT time, so a wrong path fails here, not at start.
    (void)open_drive(p.config);
    add_drive(cfg_.drives, p.config);
    return Response::no_content();
}

Response Controller::pre_boot(const PutNet& p) {
    std::vector<NetConfig> updated = cfg_.net;
    add_net(updated, p.config);
    // As Firecracker, the TAP is checked now: a missing or busy one fails this call.
    (void)virtio::net::open_tap(p.config);
    cfg_.net = std::move(updated);
    return Response::no_content();
}

Response Controller::pre_boot(const PutVsock& p) {
    // Firecracker's VsockBuilder::insert: the socket is bound now (an existing path fails this
    // call) and waits for the device built at InstanceStart; a later PUT removes the previous
    // socket file first, then binds the new path (if that fails, no vsock is configured, as in
    // Firecracker, whose insert() takes the old device out before building the new one).
    if (cfg_.vsock) {
        (void)virtio::vsock::take_parked_listener(cfg_.vsock->uds_path);
        if (::unlink(cfg_.vsock->uds_path.c_str()) != 0 && errno != ENOENT)
            throw SystemError("vsock: cannot remove the previous uds_path " + cfg_.vsock->uds_path, errno);
        cfg_.vsock.reset();
    }
    virtio::vsock::park_listener(p.config.uds_path, virtio::vsock::bind_uds(p.config.uds_path));
    cfg_.vsock = p.config;
    return Response::no_content();
}

Response Controller::pre_boot(const PutSerial& p) {
    // The file is opened when the VM is built (a FIFO needs no reader: open_output).
    cfg_.console.serial_out_path = p.serial_out_path;
    cfg_.console.serial_rate_limiter = p.rate_limiter;
    return Response::no_content();
}

Response Controller::pre_boot(const PutConsole& p) {
    cfg_.console.device = p.device;
    return Response::no_content();
}

// Firecracker's EntropyDeviceBuilder::insert: a second PUT replaces the first.
Response Controller::pre_boot(const PutEntropy& p) {
    cfg_.entropy = p.config;
    return Response::no_content();
}

Response Controller::pre_boot(const InstanceStart&) { return start_instance(); }

Response Controller::runtime(const SendCtrlAltDel&) {
    if (!vm_->send_ctrl_alt_del()) return Response::bad_request("the guest's keyboard buffer is full");
    return Response::no_content();
}

Response Controller::runtime(const PatchVmState& p) {
    const auto t0 = std::chrono::steady_clock::now();
    if (p.pause) {
        if (!vm_->pause()) return Response::bad_request("not every vCPU paused within 2 s");
        LOG_INFO("VM paused");
    } else {
        vm_->resume();
        LOG_INFO("VM resumed");
    }
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    counters_["latencies_us"][p.pause ? "pause_vm" : "resume_vm"] = static_cast<std::uint64_t>(us.count());
    return Response::no_content();
}

// Firecracker's RuntimeApiController::flush_metrics: without a metrics sink, nothing is
// written and the answer is still 204.
Response Controller::runtime(const FlushMetrics&) {
    (void)write_metrics();
    return Response::no_content();
}

Response Controller::pre_boot(const PutLogger& p) { return set_logger(p.config); }

Response Controller::pre_boot(const PutMetrics& p) { return set_metrics(p.metrics_path); }

bool Controller::write_metrics() { return metrics_.valid() && flush_metrics().status == 204; }

Response Controller::runtime(const PatchDrive& p) {
    auto blk = vm_->devices().find<virtio::block::BlockDevice>(p.drive_id);
    if (!blk) return Response::bad_request("Invalid block device ID: " + p.drive_id);
    if (p.path_on_host && blk->config().cow)
        return Response::bad_request("drive " + p.drive_id + " is a copy-on-write disk over " + blk->config().path_on_host +
                                     ": its image cannot be replaced");
    if (p.path_on_host) {
        DriveConfig updated = blk->config();
        updated.path_on_host = *p.path_on_host;
        OpenedDrive d = open_drive(updated); // throws ConfigError: the drive keeps its old image
        blk->replace_file(std::move(d.fd), d.size, updated.path_on_host);
        for (auto& c : cfg_.drives)
            if (c.drive_id == p.drive_id) c.path_on_host = updated.path_on_host;
        LOG_INFO("drive %s now uses %s (%llu bytes)", p.drive_id.c_str(), updated.path_on_host.c_str(),
                 static_cast<unsigned long long>(d.size));
    }
    if (p.rate_limiter) { // after the image: a refused path changes nothing at all
        const auto now = blk->update_rate_limiter(*p.rate_limiter);
        for (auto& c : cfg_.drives)
            if (c.drive_id == p.drive_id) c.rate_limiter = now;
    }
    return Response::no_content();
}

Response Controller::runtime(const PatchNet& p) {
    auto net = vm_->devices().find<virtio::net::NetDevice>(p.iface_id);
    if (!net) return Response::bad_request("Invalid network interface ID: " + p.iface_id);
    net->update_rate_limiters(p.rx_rate_limiter, p.tx_rate_limiter);
    for (auto& c : cfg_.net)
        if (c.iface_id == p.iface_id) {
            c.rx_rate_limiter = net->config().rx_rate_limiter;
            c.tx_rate_limiter = net->config().tx_rate_limiter;
        }
    return Response::no_content();
}

Vm::ExitHandler Controller::exit_handler() {
    return [this](int status, const std::string& detail) {
        exited_ = true;
        // A last metrics line as the VM ends (Firecracker flushes on exit too).
        if (metrics_.valid()) (void)flush_metrics();
        if (on_vm_exit_) on_vm_exit_(status, detail);
    };
}

Response Controller::runtime(const CreateSnapshot& a) {
    const auto& p = a.params;
    if (!vm_->paused())
        return Response::bad_request("Cannot create a snapshot: the microVM is running; pause it first (PATCH /vm {\"state\": \"Paused\"})");
    const auto t0 = std::chrono::steady_clock::now();
    try {
        vm_->create_snapshot(p.snapshot_path, p.mem_file_path, to_json(shown_config()).dump(),
                             p.diff ? SnapshotType::Diff : SnapshotType::Full);
    } catch (const std::exception& e) {
        return Response::bad_request(std::string("Cannot create snapshot: ") + e.what());
    }
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    // Firecracker's LatenciesUs has the request's and the VMM's share; here they are one figure.
    const std::string kind = p.diff ? "diff" : "full";
    counters_["latencies_us"][kind + "_create_snapshot"] = static_cast<std::uint64_t>(us.count());
    counters_["latencies_us"]["vmm_" + kind + "_create_snapshot"] = static_cast<std::uint64_t>(us.count());
    LOG_INFO("%s snapshot created: %s (memory %s) in %lld us", p.diff ? "Diff" : "Full", p.snapshot_path.c_str(),
             p.mem_file_path.c_str(), static_cast<long long>(us.count()));
    return Response::no_content();
}

Response Controller::pre_boot(const LoadSnapshot& a) {
    const auto& p = a.params;
    if (exited_) return Response::bad_request("the microVM has already ended");
    // Firecracker's LoadSnapshotNotAllowed (rpc_interface.rs).
    if (boot_configured_) return Response::bad_request("Loading a microVM snapshot not allowed after configuring boot-specific resources.");
    if (p.mem_file_path_used) LOG_WARN("PUT /snapshot/load: mem_file_path field is deprecated.");
    if (p.enable_diff_snapshots_used) LOG_WARN("PUT /snapshot/load: enable_diff_snapshots field is deprecated.");
    const auto t0 = std::chrono::steady_clock::now();
    VmConfig cfg;
    try {
        const SnapshotFile snap = read_snapshot_file(p.snapshot_path);
        try {
            cfg = parse_config_file(snap.vm_config, host_mem_mib_);
        } catch (const ConfigError& e) {
            throw ConfigError(std::string("the snapshot's configuration is invalid: ") + e.what());
        }
        for (const auto& [id, dev] : p.network_overrides) {
            auto it = std::find_if(cfg.net.begin(), cfg.net.end(), [&](const NetConfig& n) { return n.iface_id == id; });
            if (it == cfg.net.end()) throw ConfigError("network_overrides: the snapshot has no network interface \"" + id + "\"");
            it->host_dev_name = dev;
        }
        for (const auto& o : p.drive_overrides) {
            auto it = std::find_if(cfg.drives.begin(), cfg.drives.end(), [&](const DriveConfig& d) { return d.drive_id == o.drive_id; });
            if (it == cfg.drives.end()) throw ConfigError("the snapshot has no drive \"" + o.drive_id + "\"");
            it->path_on_host = o.path_on_host;
            it->cow = o.cow;
        }
        if (p.vsock_uds_path) {
            if (!cfg.vsock) throw ConfigError("vsock_override: the snapshot has no vsock device");
            cfg.vsock->uds_path = *p.vsock_uds_path;
        }
        // From the load request alone (Firecracker's LoadSnapshotParams), not the snapshotted VM.
        cfg.machine.track_dirty_pages = p.track_dirty_pages;
        // The serial output is this process's (PUT /serial before the load, as Firecracker's
        // vm_resources.serial_out_path), not the snapshotted process's.
        cfg.console.serial_out_path = cfg_.console.serial_out_path;
        cfg.console.serial_rate_limiter = cfg_.console.serial_rate_limiter;
        UniqueFd mem;
        SnapshotMemory source = UffdMemory{p.backend_path};
        if (p.backend == MemBackend::File) {
            mem.reset(::open(p.backend_path.c_str(), O_RDONLY | O_CLOEXEC));
            if (!mem.valid()) throw ConfigError("cannot open memory file " + p.backend_path + ": " + std::strerror(errno));
            source = FileMemory{mem.get(), p.backend_path};
        }
        vm_ = VmBuilder::from_snapshot(io_, snap, cfg, source, opts_, exit_handler(), p.clock_realtime);
        vm_->start(!p.resume_vm);
    } catch (const std::exception& e) {
        vm_.reset();
        return Response::bad_request(std::string("Cannot load snapshot: ") + e.what());
    }
    cfg_ = std::move(cfg);
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    counters_["latencies_us"]["load_snapshot"] = static_cast<std::uint64_t>(us.count());
    counters_["latencies_us"]["vmm_load_snapshot"] = static_cast<std::uint64_t>(us.count());
    LOG_INFO("snapshot loaded: %s in %lld us, %s", p.snapshot_path.c_str(), static_cast<long long>(us.count()),
             p.resume_vm ? "resumed" : "paused");
    return Response::no_content();
}

Response Controller::start_instance() {
    if (exited_) return Response::bad_request("the microVM has already ended");
    try {
        vm_ = VmBuilder::for_boot(io_, cfg_, opts_, exit_handler());
    } catch (const std::exception& e) {
        vm_.reset();
        return Response::bad_request(std::string("Cannot start microvm: ") + e.what());
    }
    vm_->start();
    LOG_INFO("microVM started: %u vCPUs, %llu MiB", cfg_.machine.vcpu_count,
             static_cast<unsigned long long>(cfg_.machine.mem_size_mib));
    return Response::no_content();
}

void Controller::boot_from_config(const ConfigFile& doc) {
    auto check = [](const Response& r) {
        if (r.status != 204) throw ConfigError(json::parse(r.body).value("fault_message", "invalid configuration"));
    };
    if (doc.logger) check(set_logger(*doc.logger));
    for (const auto& k : doc.ignored_sections) LOG_WARN("config file: ignoring unknown section \"%s\"", k.c_str());
    if (doc.metrics_path) check(set_metrics(*doc.metrics_path));
    if (doc.vm.boot_source) check_boot_source(*doc.vm.boot_source);
    cfg_ = doc.vm;
    Response r = start_instance();
    if (r.status != 204) throw ConfigError(json::parse(r.body).value("fault_message", "cannot start"));
}

void Controller::init_metrics(const std::string& path) {
    const Response r = set_metrics(path);
    if (r.status != 204) throw ConfigError(json::parse(r.body).value("fault_message", "cannot initialize metrics"));
}

Response Controller::set_logger(const LoggerConfig& c) {
    // Firecracker's Logger::update (vmm/src/logger/logging.rs): the level becomes the given one
    // or Info; the other settings change only when given.
    log::Options o = log::current_options();
    o.instance_id = id_;
    o.level = log::Level::Info;
    if (c.level) {
        auto l = log::parse_level(*c.level);
        if (!l) return Response::bad_request("invalid log level \"" + *c.level + "\"");
        o.level = *l;
    }
    if (c.show_level) o.show_level = *c.show_level;
    if (c.show_log_origin) o.show_origin = *c.show_log_origin;
    if (c.log_path) o.path = *c.log_path;
    if (c.module) o.module = *c.module;
    try {
        log::configure(o);
    } catch (const std::exception& e) {
        return Response::bad_request(std::string("Cannot initialize the logger: ") + e.what());
    }
    return Response::no_content();
}

Response Controller::set_metrics(const std::string& path) {
    if (metrics_.valid()) return Response::bad_request("Reinitialization of metrics not allowed.");
    UniqueFd fd = open_output(path, 0644);
    if (!fd.valid()) return Response::bad_request("Cannot initialize the metrics system: " + path + ": " + std::strerror(errno));
    metrics_ = RecordWriter(std::move(fd));
    arm_metrics_timer();
    return Response::no_content();
}

void Controller::arm_metrics_timer() {
    metrics_timer_.expires_after(kMetricsPeriod);
    metrics_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        (void)flush_metrics();
        arm_metrics_timer();
    });
}

std::string Controller::metrics_line() {
    auto snapshot = counters_;
    // Firecracker writes these groups in every line, whatever was configured (FirecrackerMetrics
    // and the block/net serialize proxies, whose aggregate group is always there). Ember's
    // counters appear on first use: an empty group means nothing was counted yet.
    for (const char* g : {"get_api_requests", "put_api_requests", "patch_api_requests", "latencies_us", "block", "net",
                          "uart", "vsock", "vcpu", "vmm", "logger", "api_server"})
        snapshot[g];
    snapshot["balloon"]; // Firecracker's BalloonDeviceMetrics: in every line
    snapshot["entropy"]; // Firecracker's EntropyMetricsSerializeProxy: in every line, as block and net
    snapshot["api_server"]["process_startup_time_us"] = startup_us_;
    snapshot["api_server"]["process_startup_time_cpu_us"] = startup_cpu_us_;
    // Firecracker's LoggerSystemMetrics; missed_metrics_count and metrics_fails are counted
    // by flush_metrics().
    snapshot["logger"]["missed_log_count"] = log::missed_log_count();
    snapshot["logger"]["log_fails"] = log::log_fails();
    snapshot["logger"]["missed_metrics_count"] += 0;
    snapshot["logger"]["metrics_fails"] += 0;
    // Firecracker's VmmMetrics: events the device loop served, and panics (none: Ember has no
    // panic path that returns).
    snapshot["vmm"]["panic_count"] += 0;
    std::uint64_t device_events = 0;
    if (vm_) {
        std::uint64_t in = 0, out = 0, rd = 0, wr = 0, fails = 0;
        for (const auto& v : vm_->vcpus()) {
            const auto& c = v->counters();
            in += c.exit_io_in;
            out += c.exit_io_out;
            rd += c.exit_mmio_read;
            wr += c.exit_mmio_write;
            fails += c.failures;
        }
        snapshot["vcpu"] = {{"exit_io_in", in}, {"exit_io_out", out}, {"exit_mmio_read", rd}, {"exit_mmio_write", wr}, {"failures", fails}};
        // Firecracker's device metrics: "<kind>" sums every device, "<kind>_<id>" is one device.
        // A device that can exist only once (empty id) has the "<kind>" group alone. The device
        // loop's events are every device's *event_count counters.
        for (const auto& g : vm_->devices().metric_groups()) {
            auto& one = snapshot[g.id.empty() ? g.kind : g.kind + "_" + g.id];
            for (const auto& [name, v] : g.values()) {
                one[name] = v;
                if (!g.id.empty()) snapshot[g.kind][name] += v;
                if (std::string_view(name).ends_with("event_count")) device_events += v;
            }
        }
        snapshot["vmm"]["device_events"] = device_events;
    }
    json j = json::object();
    j["utc_timestamp_ms"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count();
    for (const auto& [group, values] : snapshot) {
        json g = json::object();
        for (const auto& [name, v] : values) {
            // Counters are reported as the increase since the last flush (Firecracker's
            // IncMetric); latencies and start-up times as their last value.
            const bool incremental = group != "latencies_us" && group != "api_server";
            const std::uint64_t prev = incremental ? flushed_[group][name] : 0;
            g[name] = v >= prev ? v - prev : v;
        }
        j[group] = g;
    }
    flushed_ = snapshot;
    return Response::dump_json(j);
}

Response Controller::flush_metrics() {
    if (!metrics_.valid()) return Response::bad_request("the metrics system is not initialized (PUT /metrics first)");
    const std::string line = metrics_line() + "\n";
    if (!metrics_.write(line)) {
        count("logger", "missed_metrics_count");
        count("logger", "metrics_fails");
    }
    return Response::no_content();
}

} // namespace ember::api
