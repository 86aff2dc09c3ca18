#pragma once
// A microVM: KVM VM, guest memory, buses, devices and vCPUs, built in a fixed order from a
// VmConfig, and the VMM thread's event loop (Asio) that owns host I/O for the devices.

#include "devices/virtio/net/backend.hpp"
#include "vmm/base/bus.hpp"
#include "vmm/drives.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/vcpu.hpp"
#include "vmm/vm_config.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace ember {

class Serial;
class I8042;
class BootTimer;
class EventFdIrq;
class ConsoleOutput;
namespace virtio {
class VirtioDevice;
namespace block {
class BlockDevice;
}
namespace net {
class NetDevice;
}
namespace console {
class ConsoleDevice;
} // namespace console
} // namespace virtio

// Resources that exist before KVM is touched: guest memory with the kernel, initrd and boot
// structures already in place. Building this first means every configuration error (bad
// files, garbage images, oversized initrd) is reported even on a host without /dev/kvm.
struct PreparedGuest {
    GuestMemory mem;
    KernelImage kernel;
    std::string cmdline;
    unsigned vcpus;
    bool smt;
    std::vector<OpenedDrive> drives; // in attach order: root drive first
    std::vector<std::pair<NetConfig, std::unique_ptr<virtio::net::Tap>>> nets; // attached after drives
    ConsoleDevice console = ConsoleDevice::Serial; // Virtio: virtio-console attached after the nets
    UniqueFd console_out;                          // stdout (a duplicate) or serial_out_path
    bool console_on_stdout = true;
};

// Throws ConfigError with one line on any invalid input.
PreparedGuest prepare_guest(const VmConfig& cfg);

class Vm final : public ExitSink {
public:
    // Called once on the event loop when the VM has ended: the process exit status (0 for a
    // guest reset or a host stop request) and why. It must not destroy the Vm itself.
    using ExitHandler = std::function<void(int status, const std::string& detail)>;

    // Opens KVM and builds the VM from a prepared guest; throws ConfigError/SystemError. `io`
    // is the VMM thread's event loop: console input and exit notifications run on it.
    static std::unique_ptr<Vm> create(boost::asio::io_context& io, PreparedGuest guest, const RunOptions& opts,
                                      ExitHandler on_exit);
    ~Vm() override;

    // Starts the vCPU threads and console input.
    void start();
    // Parks every vCPU outside KVM_RUN (false if one did not park in time); resume() restarts them.
    bool pause();
    void resume();
    bool paused() const noexcept { return paused_; }
    // Ctrl-Alt-Del through the i8042 (false if its buffer is full).
    bool send_ctrl_alt_del() noexcept;

    // Ends the VM from any thread.
    void request_exit(VmExitKind kind, const std::string& detail) noexcept;
    void vcpu_exited(unsigned index, VmExitKind kind, const std::string& detail) noexcept override;

    const Bus& pio_bus() const noexcept { return pio_; }
    const Bus& mmio_bus() const noexcept { return mmio_; }
    const std::vector<std::unique_ptr<Vcpu>>& vcpus() const noexcept { return vcpus_; }
    const Serial& serial() const noexcept { return *serial_; }
    const GuestMemory& memory() const noexcept { return guest_.mem; }
    // Block devices in attach order (root drive first).
    const std::vector<std::shared_ptr<virtio::block::BlockDevice>>& block_devices() const noexcept { return blocks_; }
    const std::vector<std::shared_ptr<virtio::net::NetDevice>>& net_devices() const noexcept { return nets_; }
    // The virtio-console, if the guest console is virtio; null otherwise.
    const virtio::console::ConsoleDevice* console_device() const noexcept { return console_dev_.get(); }
    const ConsoleOutput& console_output() const noexcept { return *console_out_; }

private:
    Vm(boost::asio::io_context& io, Kvm kvm, PreparedGuest guest, ExitHandler on_exit);
    void attach_legacy_devices(const RunOptions& opts);
    void attach_virtio_devices();
    void attach_virtio(std::shared_ptr<virtio::VirtioDevice> dev);
    void start_stdin_reader();
    void read_stdin();
    void feed_console();
    void watch_terminal_size();
    void join_vcpus_or_die() noexcept;
    static constexpr std::chrono::seconds VCPU_STOP_DEADLINE{10};

    Kvm kvm_;
    VmFd vm_;
    PreparedGuest guest_;
    Bus pio_{"PIO"};
    Bus mmio_{"MMIO"};
    boost::asio::io_context& io_;
    ExitHandler on_exit_;
    bool paused_ = false;
    std::unique_ptr<EventFdIrq> serial_irq_, kbd_irq_;
    std::shared_ptr<Serial> serial_;
    std::shared_ptr<I8042> i8042_;
    std::shared_ptr<BootTimer> boot_timer_;
    std::shared_ptr<ConsoleOutput> console_out_;
    // Declared after guest_ so they are destroyed first: their in-flight I/O targets guest RAM.
    std::vector<std::shared_ptr<virtio::block::BlockDevice>> blocks_;
    std::vector<std::shared_ptr<virtio::net::NetDevice>> nets_;
    std::shared_ptr<virtio::console::ConsoleDevice> console_dev_;
    std::size_t virtio_count_ = 0;
    std::vector<std::unique_ptr<Vcpu>> vcpus_;

    struct StdinReader;
    std::unique_ptr<StdinReader> stdin_;
    std::unique_ptr<boost::asio::signal_set> winch_;

    std::mutex exit_mu_;
    std::optional<std::pair<VmExitKind, std::string>> exit_;
};

} // namespace ember
