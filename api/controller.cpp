#include "api/controller.hpp"

#include "api/config.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/net/device.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
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
    if (what.empty()) return;
    if (m == Method::Put) count("put_api_requests", what + "_fails");
    if (m == Method::Patch) count("patch_api_requests", what + "_fails");
}

Response Controller::handle(const Action& a) {
    const char* name = action_name(a);
    const char* group = std::holds_alternative<PatchMachineConfig>(a) || std::holds_alternative<PatchVmState>(a) ||
                                std::holds_alternative<PatchDrive>(a)
                            ? "patch_api_requests"
                            : "put_api_requests";
    auto fails = [&](const char* g) { count(g, std::string(name) + "_fails"); };
    auto bad = [&](const char* g, const std::string& msg) {
        fails(g);
        return Response::bad_request(msg);
    };
    try {
        if (std::holds_alternative<GetInstanceInfo>(a)) {
            count("get_api_requests", "instance_info_count");
            const char* state = !vm_ ? "Not started" : (vm_->paused() ? "Paused" : "Running");
            return Response::ok_json({{"app_name", "Ember"}, {"id", id_}, {"state", state}, {"vmm_version", EMBER_VERSION}});
        }
        if (std::holds_alternative<GetVersion>(a)) {
            count("get_api_requests", "vmm_version_count");
            return Response::ok_json({{"firecracker_version", EMBER_VERSION}});
        }
        if (std::holds_alternative<GetMachineConfig>(a)) {
            count("get_api_requests", "machine_cfg_count");
            return Response::ok_json(to_json(cfg_.machine));
        }
        if (std::holds_alternative<GetVmConfig>(a)) return Response::ok_json(to_json(cfg_));
        if (auto* p = std::get_if<PutMachineConfig>(&a)) {
            count("put_api_requests", "machine_cfg_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            cfg_.machine = parse_machine_config(p->body, host_mem_mib_);
            return Response::no_content();
        }
        if (auto* p = std::get_if<PatchMachineConfig>(&a)) {
            count("patch_api_requests", "machine_cfg_count");
            if (vm_) return bad("patch_api_requests", kNotAfterBoot);
            json merged = to_json(cfg_.machine);
            for (auto it = p->body.begin(); it != p->body.end(); ++it) merged[it.key()] = it.value();
            cfg_.machine = parse_machine_config(merged, host_mem_mib_);
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutBootSource>(&a)) {
            count("put_api_requests", "boot_source_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            cfg_.boot_source = p->config;
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutDrive>(&a)) {
            count("put_api_requests", "drive_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            // Firecracker opens the image at PUT time, so a wrong path fails here, not at start.
            (void)open_drive(p->config);
            add_drive(cfg_.drives, p->config);
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutNet>(&a)) {
            count("put_api_requests", "network_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            std::vector<NetConfig> updated = cfg_.net;
            add_net(updated, p->config);
            // As Firecracker, the TAP is checked now: a missing or busy one fails this call.
            (void)virtio::net::open_tap(p->config);
            cfg_.net = std::move(updated);
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutSerial>(&a)) {
            count("put_api_requests", "serial_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            // The file is opened (a FIFO must have a reader) when the VM is prepared.
            cfg_.console.serial_out_path = p->serial_out_path;
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutConsole>(&a)) {
            count("put_api_requests", "console_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            cfg_.console.device = p->device;
            return Response::no_content();
        }
        if (auto* p = std::get_if<PatchDrive>(&a)) {
            count("patch_api_requests", "drive_count");
            if (!vm_) return bad("patch_api_requests", kNotBeforeBoot);
            return patch_drive(*p);
        }
        if (std::holds_alternative<InstanceStart>(a)) {
            count("put_api_requests", "actions_count");
            if (vm_) return bad("put_api_requests", kNotAfterBoot);
            Response r = start_instance();
            if (r.status != 204) fails("put_api_requests");
            return r;
        }
        if (std::holds_alternative<SendCtrlAltDel>(a)) {
            count("put_api_requests", "actions_count");
            if (!vm_) return bad("put_api_requests", kNotBeforeBoot);
            if (!vm_->send_ctrl_alt_del()) return bad("put_api_requests", "the guest's keyboard buffer is full");
            return Response::no_content();
        }
        if (std::holds_alternative<FlushMetrics>(a)) {
            count("put_api_requests", "actions_count");
            Response r = flush_metrics();
            if (r.status != 204) fails("put_api_requests");
            return r;
        }
        if (auto* p = std::get_if<PatchVmState>(&a)) {
            if (!vm_) return bad("patch_api_requests", kNotBeforeBoot);
            const auto t0 = std::chrono::steady_clock::now();
            if (p->pause) {
                if (!vm_->pause()) return bad("patch_api_requests", "not every vCPU paused within 2 s");
                LOG_INFO("VM paused");
            } else {
                vm_->resume();
                LOG_INFO("VM resumed");
            }
            const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
            counters_["latencies_us"][p->pause ? "pause_vm" : "resume_vm"] = static_cast<std::uint64_t>(us.count());
            return Response::no_content();
        }
        if (auto* p = std::get_if<PutLogger>(&a)) {
            count("put_api_requests", "logger_count");
            Response r = set_logger(p->config);
            if (r.status != 204) fails("put_api_requests");
            return r;
        }
        if (auto* p = std::get_if<PutMetrics>(&a)) {
            count("put_api_requests", "metrics_count");
            Response r = set_metrics(p->metrics_path);
            if (r.status != 204) fails("put_api_requests");
            return r;
        }
    } catch (const std::exception& e) {
        // Only configuration parsing throws here; the state above is unchanged when it does.
        fails(group);
        return Response::bad_request(e.what());
    }
    return Response::bad_request("unhandled action");
}

Response Controller::patch_drive(const PatchDrive& p) {
    for (const auto& blk : vm_->block_devices()) {
        if (blk->config().drive_id != p.drive_id) continue;
        if (!p.path_on_host) return Response::no_content(); // nothing to change (rate limiters come later)
        DriveConfig updated = blk->config();
        updated.path_on_host = *p.path_on_host;
        OpenedDrive d = open_drive(updated); // throws ConfigError: the drive keeps its old image
        blk->replace_file(std::move(d.fd), d.size, updated.path_on_host);
        for (auto& c : cfg_.drives)
            if (c.drive_id == p.drive_id) c.path_on_host = updated.path_on_host;
        LOG_INFO("drive %s now uses %s (%llu bytes)", p.drive_id.c_str(), updated.path_on_host.c_str(),
                 static_cast<unsigned long long>(d.size));
        return Response::no_content();
    }
    count("patch_api_requests", "drive_fails");
    return Response::bad_request("Invalid block device ID: " + p.drive_id);
}

Response Controller::start_instance() {
    if (exited_) return Response::bad_request("the microVM has already ended");
    try {
        PreparedGuest guest = prepare_guest(cfg_);
        vm_ = Vm::create(io_, std::move(guest), opts_, [this](int status, const std::string& detail) {
            exited_ = true;
            // A last metrics line as the VM ends (Firecracker flushes on exit too).
            if (metrics_fd_.valid()) (void)flush_metrics();
            if (on_vm_exit_) on_vm_exit_(status, detail);
        });
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
    if (doc.metrics_path) check(set_metrics(*doc.metrics_path));
    cfg_ = doc.vm;
    Response r = start_instance();
    if (r.status != 204) throw ConfigError(json::parse(r.body).value("fault_message", "cannot start"));
}

Response Controller::set_logger(const LoggerConfig& c) {
    log::Options o;
    o.instance_id = id_;
    o.level = log::Level::Info; // Firecracker's default for an API-configured logger
    if (c.level) {
        auto l = log::parse_level(*c.level);
        if (!l) return Response::bad_request("invalid log level \"" + *c.level + "\"");
        o.level = *l;
    }
    o.show_level = c.show_level.value_or(false);
    o.show_origin = c.show_log_origin.value_or(false);
    o.path = c.log_path.value_or("");
    try {
        log::configure(o);
    } catch (const std::exception& e) {
        return Response::bad_request(std::string("Cannot initialize the logger: ") + e.what());
    }
    return Response::no_content();
}

Response Controller::set_metrics(const std::string& path) {
    if (metrics_fd_.valid()) return Response::bad_request("Reinitialization of metrics not allowed.");
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) return Response::bad_request("Cannot initialize the metrics system: " + path + ": " + std::strerror(errno));
    metrics_fd_.reset(fd);
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
        // A device that can exist only once (empty id) has the "<kind>" group alone.
        using Fields = std::initializer_list<std::pair<const char*, const std::atomic<std::uint64_t>*>>;
        auto device_group = [&](const std::string& kind, const std::string& id, Fields fields) -> std::map<std::string, std::uint64_t>& {
            if (id.empty()) {
                auto& only = snapshot[kind];
                for (const auto& [name, c] : fields) only[name] = c->load(std::memory_order_relaxed);
                return only;
            }
            auto& one = snapshot[kind + "_" + id];
            auto& all = snapshot[kind];
            for (const auto& [name, c] : fields) {
                one[name] = c->load(std::memory_order_relaxed);
                all[name] += one[name];
            }
            return one;
        };
        for (const auto& blk : vm_->block_devices()) {
            const auto& m = blk->metrics();
            auto& one = device_group("block", blk->config().drive_id,
                {{"activate_fails", &m.activate_fails}, {"cfg_fails", &m.cfg_fails},
                 {"event_fails", &m.event_fails},       {"execute_fails", &m.execute_fails},
                 {"invalid_reqs_count", &m.invalid_reqs_count}, {"flush_count", &m.flush_count},
                 {"queue_event_count", &m.queue_event_count},   {"read_bytes", &m.read_bytes},
                 {"write_bytes", &m.write_bytes},       {"read_count", &m.read_count},
                 {"write_count", &m.write_count},       {"update_count", &m.update_count},
                 {"update_fails", &m.update_fails},     {"no_avail_buffer", &m.no_avail_buffer}});
            device_events += one["queue_event_count"];
        }
        for (const auto& nd : vm_->net_devices()) {
            const auto& m = nd->metrics();
            auto& one = device_group("net", nd->config().iface_id,
                {{"activate_fails", &m.activate_fails},   {"event_fails", &m.event_fails},
                 {"no_rx_avail_buffer", &m.no_rx_avail_buffer}, {"rx_queue_event_count", &m.rx_queue_event_count},
                 {"rx_tap_event_count", &m.rx_tap_event_count}, {"rx_bytes_count", &m.rx_bytes_count},
                 {"rx_packets_count", &m.rx_packets_count}, {"rx_fails", &m.rx_fails},
                 {"rx_count", &m.rx_count},               {"tap_read_fails", &m.tap_read_fails},
                 {"tap_write_fails", &m.tap_write_fails}, {"tx_bytes_count", &m.tx_bytes_count},
                 {"tx_malformed_frames", &m.tx_malformed_frames}, {"tx_fails", &m.tx_fails},
                 {"tx_count", &m.tx_count},               {"tx_packets_count", &m.tx_packets_count},
                 {"tx_queue_event_count", &m.tx_queue_event_count}});
            device_events += one["rx_queue_event_count"] + one["tx_queue_event_count"] + one["rx_tap_event_count"];
        }
        if (const auto* cd = vm_->console_device()) {
            const auto& m = cd->metrics();
            auto& g = device_group("virtio_console", "",
                {{"activate_fails", &m.activate_fails}, {"event_fails", &m.event_fails},
                 {"rx_queue_event_count", &m.rx_queue_event_count}, {"tx_queue_event_count", &m.tx_queue_event_count},
                 {"rx_bytes_count", &m.rx_bytes_count}, {"rx_count", &m.rx_count}, {"rx_fails", &m.rx_fails},
                 {"tx_bytes_count", &m.tx_bytes_count}, {"tx_count", &m.tx_count},
                 {"tx_malformed_chains", &m.tx_malformed_chains}});
            device_events += g["rx_queue_event_count"] + g["tx_queue_event_count"];
        }
        // Ember's: the host end of the console (stdout or serial_out_path), shared by both devices.
        const auto& o = vm_->console_output().metrics();
        snapshot["console_output"] = {{"bytes_written", o.bytes_written.load()}, {"bytes_dropped", o.bytes_dropped.load()},
                                      {"write_fails", o.write_fails.load()}};
        snapshot["vmm"]["device_events"] = device_events;
        const auto& u = vm_->serial().counters();
        snapshot["uart"] = {{"read_count", u.read_count.load()},           {"write_count", u.write_count.load()},
                            {"missed_read_count", u.missed_read_count.load()}, {"missed_write_count", u.missed_write_count.load()},
                            {"error_count", u.error_count.load()},         {"flush_count", 0}};
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
    if (!metrics_fd_.valid()) return Response::bad_request("the metrics system is not initialized (PUT /metrics first)");
    std::string line = metrics_line() + "\n";
    if (::write(metrics_fd_.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
        count("logger", "missed_metrics_count");
        count("logger", "metrics_fails");
    }
    return Response::no_content();
}

} // namespace ember::api
