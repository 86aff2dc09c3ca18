#pragma once
// Executes API actions on the VMM thread: holds the pre-boot configuration, builds and starts
// the VM on InstanceStart, pauses/resumes it, and writes metrics. Every method runs on the
// VMM thread's io_context; the HTTP server posts requests there and gets a Response back.

#include "api/routes.hpp"
#include "vmm/base/output_file.hpp"
#include "vmm/vm.hpp"
#include "vmm/vm_config.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace ember::api {

class Controller {
public:
    // `on_vm_exit` runs on the VMM thread when the guest ends; Ember then exits with `status`.
    Controller(boost::asio::io_context& io, std::string instance_id, RunOptions opts, std::uint64_t host_mem_mib,
               std::function<void(int status, const std::string& detail)> on_vm_exit);
    ~Controller();

    Response handle(const Action& a);
    // Counts a request the router refused (for the *_fails metrics).
    void count_rejected(const std::string& method, const std::string& target);
    // --metrics-path: as PUT /metrics, before anything else; throws ConfigError.
    void init_metrics(const std::string& path);
    // Applies a --config-file document (logger, metrics, VM) and boots it; throws ConfigError.
    void boot_from_config(const ConfigFile& doc);

    bool started() const noexcept { return vm_ != nullptr; }
    Vm* vm() noexcept { return vm_.get(); }
    // Process start to API socket ready, reported in the api_server metrics group.
    void set_startup_time(std::uint64_t us, std::uint64_t cpu_us) noexcept {
        startup_us_ = us;
        startup_cpu_us_ = cpu_us;
    }
    // The metrics line Firecracker would write now (deltas since the previous flush).
    std::string metrics_line();
    // Writes a metrics line now if metrics are configured (the periodic timer, Ember ending
    // before boot, tests); false if there is no metrics sink.
    bool write_metrics();

private:
    // Handlers, one overload per action: dispatch is a std::visit, so an action without one is a
    // compile error. Pre-boot actions run only before InstanceStart, runtime ones only after;
    // handle() answers the wrong phase before calling them.
    Response pre_boot(const PutMachineConfig& a);
    Response pre_boot(const PatchMachineConfig& a);
    Response pre_boot(const PutBootSource& a);
    Response pre_boot(const PutDrive& a);
    Response pre_boot(const PutNet& a);
    Response pre_boot(const PutSerial& a);
    Response pre_boot(const PutConsole& a);
    Response pre_boot(const PutCpuConfig& a);
    Response pre_boot(const PutEntropy& a);
    Response pre_boot(const PutVsock& a);
    Response pre_boot(const InstanceStart& a);
    // Firecracker's LoadSnapshot: before any boot-specific configuration (see boot_configured_).
    Response pre_boot(const LoadSnapshot& a);
    // Firecracker 1.16 (vmm/src/rpc_interface.rs) refuses logger and metrics changes after boot.
    Response pre_boot(const PutLogger& a);
    Response pre_boot(const PutMetrics& a);
    // ... and FlushMetrics before it.
    Response runtime(const FlushMetrics& a);
    Response runtime(const PatchDrive& a);
    Response runtime(const PatchNet& a);
    Response runtime(const SendCtrlAltDel& a);
    Response runtime(const PatchVmState& a);
    Response runtime(const CreateSnapshot& a);
    Response any_time(const GetInstanceInfo& a);
    Response any_time(const GetVersion& a);
    Response any_time(const GetMachineConfig& a);
    Response any_time(const GetVmConfig& a);
    Response any_time(const BalloonRequest& a); // api/balloon_api.cpp: each request checks its phase

    Response start_instance();
    Vm::ExitHandler exit_handler();
    // The configuration as GET /vm/config shows it: after boot, each drive with the engine it runs.
    VmConfig shown_config() const;
    Response set_logger(const LoggerConfig& c);
    Response set_metrics(const std::string& path);
    Response flush_metrics();
    void arm_metrics_timer();
    void count(const std::string& group, const std::string& name, std::uint64_t n = 1);

    boost::asio::io_context& io_;
    std::string id_;
    RunOptions opts_;
    std::uint64_t host_mem_mib_;
    std::function<void(int, const std::string&)> on_vm_exit_;
    VmConfig cfg_;
    std::unique_ptr<Vm> vm_;
    bool exited_ = false;
    // A boot-specific resource (machine, boot source, drive, interface, vsock, entropy, CPU
    // template) was configured: a snapshot can no longer be loaded (Firecracker's boot_path).
    bool boot_configured_ = false;
    std::uint64_t startup_us_ = 0, startup_cpu_us_ = 0;

    RecordWriter metrics_;
    boost::asio::steady_timer metrics_timer_;
    std::map<std::string, std::map<std::string, std::uint64_t>> counters_, flushed_;
};

} // namespace ember::api
