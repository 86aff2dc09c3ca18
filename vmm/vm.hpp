#pragma once
// A running microVM's lifecycle: its vCPU threads, pause and resume, Ctrl-Alt-Del, and how it
// ends. vmm/builder.hpp assembles it; the VMM thread's event loop (Asio) owns host I/O for the
// devices and runs the exit notification.

#include "vmm/base/guest_memory.hpp"
#include "vmm/device_manager.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/snapshot_memory.hpp"
#include "vmm/uffd_backend.hpp"
#include "vmm/vcpu.hpp"

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace ember {

class BootTimer;
class ConsoleOutput;
class HostConsole;
class I8042;
class Serial;

class Vm final : public ExitSink {
public:
    // Called once on the event loop when the VM has ended: the process exit status (0 for a
    // guest reset or a host stop request) and why. It must not destroy the Vm itself.
    using ExitHandler = std::function<void(int status, const std::string& detail)>;

    ~Vm() override;
    Vm(const Vm&) = delete;
    Vm& operator=(const Vm&) = delete;

    // Starts the vCPU threads and the host console; `paused`: the vCPUs park before they run
    // (a snapshot loaded without resume_vm) until resume().
    void start(bool paused = false);
    // Parks every vCPU outside KVM_RUN (false if one did not park in time); resume() restarts them.
    bool pause();
    void resume();
    bool paused() const noexcept { return paused_; }
    // Writes a snapshot of the paused VM: the state to `snapshot_path` (vmm/snapshot_file.hpp)
    // and guest RAM to `mem_path` (vmm/snapshot_memory.hpp: Full = all of it, all-zero pages left
    // as holes; Diff = the pages written since the previous snapshot, from the dirty logs when
    // tracking, else every resident page). Either starts the next Diff afresh. `vm_config` is
    // stored as given (the API layer's rendering of the configuration).
    // Devices are quiesced first (block requests in flight complete), then the in-kernel
    // devices, clock and vCPUs are read. Throws ConfigError (not paused, files) or SystemError;
    // the VM stays paused and usable either way.
    void create_snapshot(const std::string& snapshot_path, const std::string& mem_path, std::string vm_config,
                         SnapshotType type = SnapshotType::Full);
    // Whether KVM and GuestMemory log written pages (machine-config track_dirty_pages at boot,
    // the load request's after a load).
    bool tracks_dirty_pages() const noexcept { return track_dirty_; }
    // Ctrl-Alt-Del through the i8042 (false if its buffer is full).
    bool send_ctrl_alt_del() noexcept;

    // Ends the VM from any thread.
    void request_exit(VmExitKind kind, const std::string& detail) noexcept;
    void vcpu_exited(unsigned index, VmExitKind kind, const std::string& detail) noexcept override;

    DeviceManager& devices() noexcept { return devices_; }
    const DeviceManager& devices() const noexcept { return devices_; }
    const std::vector<std::unique_ptr<Vcpu>>& vcpus() const noexcept { return vcpus_; }
    const GuestMemory& memory() const noexcept { return mem_; }

private:
    friend class VmBuilder;
    Vm(boost::asio::io_context& io, GuestMemory mem, ExitHandler on_exit);
    void join_vcpus_or_die() noexcept;
    // Every device with an interrupt pending raises it again (a restored VM, once KVM holds its
    // saved state).
    void refire_interrupts() noexcept;
    static constexpr std::chrono::seconds VCPU_STOP_DEADLINE{10};

    boost::asio::io_context& io_;
    ExitHandler on_exit_;
    GuestMemory mem_;
    std::optional<UffdBackend> uffd_; // Uffd-loaded RAM: the handler's socket and uffd, held for the VM's life
    std::optional<Kvm> kvm_;
    std::optional<VmFd> vm_fd_;
    // Declared after mem_ so they are destroyed first: their in-flight I/O targets guest RAM.
    DeviceManager devices_;
    std::shared_ptr<ConsoleOutput> console_out_;
    std::shared_ptr<Serial> serial_;
    std::shared_ptr<I8042> i8042_;
    std::shared_ptr<BootTimer> boot_timer_; // null unless RunOptions::boot_timer
    std::unique_ptr<HostConsole> host_console_;
    std::vector<std::unique_ptr<Vcpu>> vcpus_;
    bool paused_ = false;
    bool track_dirty_ = false;

    std::mutex exit_mu_;
    std::optional<std::pair<VmExitKind, std::string>> exit_;
};

} // namespace ember
