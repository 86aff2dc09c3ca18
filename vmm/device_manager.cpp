#include "vmm/device_manager.hpp"

#include "devices/virtio/mmio.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/error.hpp"
#include "vmm/kvm/kvm.hpp"

#include <cstdio>

namespace ember {

DeviceManager::~DeviceManager() = default;

std::uint64_t virtio_mmio_addr(std::size_t n) noexcept { return layout::VIRTIO_MMIO_BASE + n * layout::VIRTIO_MMIO_SLOT; }
std::uint32_t virtio_irq(std::size_t n) noexcept { return layout::IRQ_VIRTIO_BASE + static_cast<std::uint32_t>(n); }
std::size_t max_virtio_devices() noexcept { return layout::IRQ_MAX - layout::IRQ_VIRTIO_BASE + 1; }

std::string virtio_mmio_arg(std::size_t n) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "virtio_mmio.device=4K@0x%llx:%u", static_cast<unsigned long long>(virtio_mmio_addr(n)), virtio_irq(n));
    return buf;
}

void DeviceManager::attach_pio(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string name) {
    pio_.insert(base, len, std::move(dev), std::move(name));
}

void DeviceManager::attach_mmio(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string name) {
    mmio_.insert(base, len, std::move(dev), std::move(name));
}

IrqLine& DeviceManager::irq_line(std::uint32_t gsi) {
    lines_.push_back(Line{gsi, std::make_unique<EventFdIrq>()});
    return *lines_.back().irq;
}

void DeviceManager::attach_virtio(std::shared_ptr<virtio::VirtioDevice> dev, std::string id) {
    const std::size_t n = virtio_.size();
    if (n >= max_virtio_devices())
        throw ConfigError("at most " + std::to_string(max_virtio_devices()) + " virtio devices fit the IRQ range");
    const std::uint64_t base = virtio_mmio_addr(n);
    const std::uint32_t gsi = virtio_irq(n);
    auto transport = std::make_shared<virtio::MmioTransport>(dev, io_);
    mmio_.insert(base, layout::VIRTIO_MMIO_SLOT, std::move(transport), dev->name());
    kernel_args_ += (kernel_args_.empty() ? "" : " ") + virtio_mmio_arg(n);
    virtio_.push_back(VirtioSlot{std::move(id), std::move(dev), base, gsi});
}

void DeviceManager::register_with(VmFd& vm) const {
    for (const auto& l : lines_) vm.register_irqfd(l.irq->fd(), l.gsi);
    for (const auto& v : virtio_) {
        vm.register_irqfd(v.dev->irq_fd(), v.gsi);
        for (std::size_t q = 0; q < v.dev->queues().size(); ++q)
            if (!v.dev->serve_on_vcpu(q)) vm.register_ioeventfd(v.dev->notify_fd(q), v.base + virtio::mmio::QUEUE_NOTIFY, 4, false, q);
    }
}

void DeviceManager::add_metrics(std::string kind, std::string id, std::function<MetricValues()> values) {
    metrics_.push_back(MetricGroup{std::move(kind), std::move(id), std::move(values)});
}

} // namespace ember
