#include "devices/virtio/mmio.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace ember::virtio {

MmioTransport::MmioTransport(std::shared_ptr<VirtioDevice> dev, boost::asio::io_context& io) : dev_(std::move(dev)) {
    for (std::size_t q = 0; q < dev_->queues().size(); ++q) {
        int fd = ::dup(dev_->notify_fd(q));
        if (fd < 0) throw SystemError("dup of a virtio notification eventfd", errno);
        watchers_.push_back(std::make_unique<boost::asio::posix::stream_descriptor>(io, fd));
    }
    for (std::size_t q = 0; q < watchers_.size(); ++q) watch(q);
}

MmioTransport::~MmioTransport() {
    for (auto& w : watchers_) {
        boost::system::error_code ec;
        w->close(ec);
    }
}

void MmioTransport::watch(std::size_t q) {
    watchers_[q]->async_wait(boost::asio::posix::stream_descriptor::wait_read, [this, q](const boost::system::error_code& ec) {
        if (ec) return; // closed: `this` may be gone
        std::uint64_t count = 0;
        (void)!::read(watchers_[q]->native_handle(), &count, sizeof count);
        {
            std::lock_guard lk(dev_->mutex());
            serve_queue(q);
        }
        watch(q);
    });
}

// Needs the device lock. A queue is served only while the device runs and the queue is live.
void MmioTransport::serve_queue(std::size_t q) noexcept {
    if (dev_->running() && dev_->queues()[q].active()) dev_->process_queue(q);
}

void MmioTransport::read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept {
    if (offset == mmio::INTERRUPT_STATUS && data.size() == 4) {
        // The driver's interrupt handler reads this on every interrupt. It is an atomic, so it
        // never waits for the device lock, which the event loop holds while it serves a queue.
        const std::uint32_t v = dev_->interrupt_status();
        std::memcpy(data.data(), &v, 4);
        return;
    }
    std::lock_guard lk(dev_->mutex());
    if (offset >= mmio::CONFIG) {
        dev_->read_config(offset - mmio::CONFIG, data);
        return;
    }
    // §4.2.2.2: registers are read with aligned 32-bit accesses only.
    if (data.size() != 4 || offset % 4 != 0) {
        std::memset(data.data(), 0, data.size());
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    const std::uint32_t v = read_register(offset);
    std::memcpy(data.data(), &v, 4);
}

void MmioTransport::write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept {
    if (offset == mmio::INTERRUPT_ACK && data.size() == 4) {
        std::uint32_t v;
        std::memcpy(&v, data.data(), 4);
        dev_->ack_interrupt(v); // lock-free, as the InterruptStatus read
        return;
    }
    std::lock_guard lk(dev_->mutex());
    if (offset >= mmio::CONFIG) {
        dev_->write_config(offset - mmio::CONFIG, data);
        return;
    }
    if (data.size() != 4 || offset % 4 != 0) {
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    std::uint32_t v;
    std::memcpy(&v, data.data(), 4);
    write_register(offset, v);
}

std::uint32_t MmioTransport::read_register(std::uint64_t offset) noexcept {
    VirtioDevice& d = *dev_;
    const VirtioState& s = d.state();
    auto selected = [&]() -> Queue* { return s.queue_sel < d.queues().size() ? &d.queues()[s.queue_sel] : nullptr; };
    switch (offset) {
    case mmio::MAGIC_VALUE: return mmio::MAGIC;
    case mmio::VERSION_REG: return mmio::VERSION;
    case mmio::DEVICE_ID: return d.device_type();
    case mmio::VENDOR_ID: return 0;
    case mmio::DEVICE_FEATURES:
        return s.device_features_sel > 1 ? 0 : static_cast<std::uint32_t>(d.offered_features() >> (32 * s.device_features_sel));
    case mmio::QUEUE_NUM_MAX: {
        // Zero means "no such queue" (§4.2.2).
        Queue* q = selected();
        return q ? q->max_size() : 0;
    }
    case mmio::QUEUE_READY: {
        Queue* q = selected();
        return q && q->ready() ? 1 : 0;
    }
    case mmio::STATUS: return s.status;
    case mmio::SHM_LEN_LOW:
    case mmio::SHM_LEN_HIGH: return 0xffffffff; // no shared memory regions (§4.2.2: length -1)
    case mmio::CONFIG_GENERATION: return s.config_generation;
    default:
        rejected_.fetch_add(1, std::memory_order_relaxed);
        return 0;
    }
}

void MmioTransport::write_register(std::uint64_t offset, std::uint32_t v) noexcept {
    VirtioDevice& d = *dev_;
    VirtioState& s = d.state();
    bool ok = true;
    Queue* q = s.queue_sel < d.queues().size() ? &d.queues()[s.queue_sel] : nullptr;
    const bool qw = q && d.queue_config_writable();
    switch (offset) {
    case mmio::DEVICE_FEATURES_SEL: s.device_features_sel = v; break;
    case mmio::DRIVER_FEATURES: ok = d.write_driver_features(s.driver_features_sel, v); break;
    case mmio::DRIVER_FEATURES_SEL: s.driver_features_sel = v; break;
    case mmio::QUEUE_SEL: s.queue_sel = v; break;
    case mmio::QUEUE_NUM:
        ok = qw && v <= 0xffff;
        if (ok) q->set_size(static_cast<std::uint16_t>(v));
        break;
    case mmio::QUEUE_READY:
        // Clearing a queue is harmless at any time (Linux does it after a reset); enabling one
        // only while queues are being configured.
        ok = q && (v == 0 || (v == 1 && qw));
        if (ok && !(d.state().status & status::DRIVER_OK)) q->set_ready(v == 1);
        break;
    case mmio::QUEUE_NOTIFY:
        // Normally caught by the ioeventfd; an access KVM did not match lands here, and so do
        // notifications of queues the device serves on the vCPU (no ioeventfd is registered).
        ok = v < d.queues().size();
        if (ok && d.serve_on_vcpu(v)) {
            serve_queue(v);
        } else if (ok) {
            d.notify(v);
        }
        break;
    case mmio::STATUS: ok = d.write_status(v); break;
    case mmio::QUEUE_DESC_LOW:
    case mmio::QUEUE_DESC_HIGH:
        ok = qw;
        if (ok) q->set_desc_addr(v, offset == mmio::QUEUE_DESC_HIGH);
        break;
    case mmio::QUEUE_DRIVER_LOW:
    case mmio::QUEUE_DRIVER_HIGH:
        ok = qw;
        if (ok) q->set_avail_addr(v, offset == mmio::QUEUE_DRIVER_HIGH);
        break;
    case mmio::QUEUE_DEVICE_LOW:
    case mmio::QUEUE_DEVICE_HIGH:
        ok = qw;
        if (ok) q->set_used_addr(v, offset == mmio::QUEUE_DEVICE_HIGH);
        break;
    case mmio::SHM_SEL: s.shm_sel = v; break;
    default: ok = false;
    }
    if (!ok) rejected_.fetch_add(1, std::memory_order_relaxed);
}

} // namespace ember::virtio
