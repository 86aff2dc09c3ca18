#pragma once
// The one place that puts devices on the machine. Attaching a device allocates its bus range and
// interrupt line, inserts it on the bus and records what the guest must be told (its
// virtio_mmio.device= kernel argument) in one call, so slots, IRQs and arguments cannot drift
// apart. Attaching needs no KVM: it runs while the guest is prepared, before /dev/kvm is opened,
// and register_with() later connects the recorded interrupt lines (irqfd) and queue
// notifications (ioeventfd) to the VM.
//
// Metrics: every attached device can register a group (Firecracker's "<kind>" or
// "<kind>_<id>") whose values it lists itself.

#include "vmm/base/bus.hpp"
#include "vmm/base/irq.hpp"
#include "vmm/base/metrics.hpp"

#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace ember {

class VmFd;

// The virtio-mmio slot and IRQ of the n-th virtio device, and its kernel argument
// (virtio_mmio.device=4K@0x...:IRQ, Documentation/admin-guide/kernel-parameters.txt).
std::uint64_t virtio_mmio_addr(std::size_t n) noexcept;
std::uint32_t virtio_irq(std::size_t n) noexcept;
std::size_t max_virtio_devices() noexcept;
std::string virtio_mmio_arg(std::size_t n);
namespace virtio {
class VirtioDevice;
}

class DeviceManager {
public:
    explicit DeviceManager(boost::asio::io_context& io) : io_(io) {}
    DeviceManager(const DeviceManager&) = delete;
    DeviceManager& operator=(const DeviceManager&) = delete;
    ~DeviceManager();

    // A device at a fixed port or address range (throws std::invalid_argument on overlap).
    void attach_pio(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string name);
    void attach_mmio(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string name);
    // An edge-triggered interrupt line on a fixed GSI (the ISA IRQs of legacy devices), owned here.
    IrqLine& irq_line(std::uint32_t gsi);

    // A virtio device on the next virtio-mmio slot, with its IRQ, its transport on the MMIO bus,
    // its queue notifications and its kernel argument; `id` names it for find(). Throws
    // ConfigError when the IRQ range is used up.
    void attach_virtio(std::shared_ptr<virtio::VirtioDevice> dev, std::string id);
    // As above, with the device's metrics as group `kind` (one device, empty id) or `kind`_`id`.
    template <class Device>
    void attach_virtio(std::shared_ptr<Device> dev, std::string id, std::string metrics_kind) {
        add_metrics(std::move(metrics_kind), id, [dev] { return dev->metrics().values(); });
        attach_virtio(std::shared_ptr<virtio::VirtioDevice>(dev), std::move(id));
    }
    // The attached virtio device of type Device named `id`; null if there is none.
    template <class Device>
    std::shared_ptr<Device> find(const std::string& id) const {
        for (const auto& v : virtio_)
            if (v.id == id)
                if (auto d = std::dynamic_pointer_cast<Device>(v.dev)) return d;
        return nullptr;
    }
    // The first attached virtio device of type Device; null if there is none.
    template <class Device>
    std::shared_ptr<Device> find_first() const {
        for (const auto& v : virtio_)
            if (auto d = std::dynamic_pointer_cast<Device>(v.dev)) return d;
        return nullptr;
    }
    std::size_t virtio_count() const noexcept { return virtio_.size(); }
    // Every attached virtio device with its slot, in slot order (snapshots save them so).
    struct VirtioSlot {
        std::string id;
        std::shared_ptr<virtio::VirtioDevice> dev;
        std::uint64_t base;
        std::uint32_t gsi;
    };
    const std::vector<VirtioSlot>& virtio_slots() const noexcept { return virtio_; }

    // virtio_mmio.device=... for every virtio device, in slot order, space-separated.
    const std::string& kernel_args() const noexcept { return kernel_args_; }
    // Connects every interrupt line (KVM_IRQFD) and queue notification (KVM_IOEVENTFD).
    void register_with(VmFd& vm) const;

    struct MetricGroup {
        std::string kind;
        std::string id; // empty for a device that exists once
        std::function<MetricValues()> values;
    };
    void add_metrics(std::string kind, std::string id, std::function<MetricValues()> values);
    const std::vector<MetricGroup>& metric_groups() const noexcept { return metrics_; }

    Bus& pio() noexcept { return pio_; }
    Bus& mmio() noexcept { return mmio_; }
    const Bus& pio() const noexcept { return pio_; }
    const Bus& mmio() const noexcept { return mmio_; }

private:
    struct Line {
        std::uint32_t gsi;
        std::unique_ptr<EventFdIrq> irq;
    };

    boost::asio::io_context& io_;
    Bus pio_{"PIO"};
    Bus mmio_{"MMIO"};
    std::vector<Line> lines_;
    std::vector<VirtioSlot> virtio_;
    std::string kernel_args_;
    std::vector<MetricGroup> metrics_;
};

} // namespace ember
