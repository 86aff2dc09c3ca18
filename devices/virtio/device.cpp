#include "devices/virtio/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

namespace ember::virtio {

VirtioDevice::VirtioDevice(const GuestMemory& mem, std::vector<std::uint16_t> queue_max_sizes) : mem_(mem) {
    for (auto n : queue_max_sizes) queues_.emplace_back(n);
    notify_.resize(queue_max_sizes.size());
}

std::uint64_t VirtioDevice::offered_features() const noexcept {
    return device_features() | bit(feature::VERSION_1) | bit(feature::RING_INDIRECT_DESC) | bit(feature::RING_EVENT_IDX);
}

bool VirtioDevice::negotiated(unsigned feature_bit) const noexcept { return (state_.acked_features & bit(feature_bit)) != 0; }

bool VirtioDevice::running() const noexcept {
    return (state_.status & status::DRIVER_OK) && !(state_.status & (status::DEVICE_NEEDS_RESET | status::FAILED));
}

bool VirtioDevice::queue_config_writable() const noexcept {
    return (state_.status & status::FEATURES_OK) && !(state_.status & status::DRIVER_OK);
}

bool VirtioDevice::write_driver_features(std::uint32_t page, std::uint32_t value) noexcept {
    if (!(state_.status & status::DRIVER) || (state_.status & status::FEATURES_OK)) return false;
    if (page > 1) return value == 0; // no feature bits above 63
    const unsigned shift = 32 * page;
    state_.acked_features = (state_.acked_features & ~(0xffffffffULL << shift)) | (std::uint64_t{value} << shift);
    return true;
}

bool VirtioDevice::write_status(std::uint32_t value) noexcept {
    if (value == 0) {
        reset();
        return true;
    }
    const std::uint32_t old = state_.status;
    // The driver never clears a bit except by writing 0, and never sets DEVICE_NEEDS_RESET.
    if ((value & old) != old || (value & status::DEVICE_NEEDS_RESET & ~old)) return false;
    const std::uint32_t added = value & ~old;
    auto requires_bit = [&](std::uint32_t b, std::uint32_t prerequisite) { return !(added & b) || (value & prerequisite); };
    if (!requires_bit(status::DRIVER, status::ACKNOWLEDGE) || !requires_bit(status::FEATURES_OK, status::DRIVER) ||
        !requires_bit(status::DRIVER_OK, status::FEATURES_OK))
        return false;
    if (added & ~(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK | status::FAILED)) return false;

    if (added & status::FEATURES_OK) {
        // §3.1.1 step 5-6: the device refuses FEATURES_OK for features it did not offer or
        // without VERSION_1 (legacy drivers are not supported); the driver reads it back.
        const std::uint64_t acked = state_.acked_features;
        // DRIVER_OK written in the same access falls with it: it requires FEATURES_OK.
        if ((acked & ~offered_features()) != 0 || !(acked & bit(feature::VERSION_1)))
            value &= ~(status::FEATURES_OK | status::DRIVER_OK);
    }
    state_.status = value;
    if (value & added & status::DRIVER_OK) {
        for (std::size_t i = 0; i < queues_.size(); ++i) {
            Queue& q = queues_[i];
            if (!q.ready()) continue;
            const std::string err = q.activate(mem_, negotiated(feature::RING_EVENT_IDX), negotiated(feature::RING_INDIRECT_DESC));
            if (!err.empty()) {
                fail("queue " + std::to_string(i) + ": " + err);
                return true;
            }
        }
        if (!activate()) {
            fail("activation failed");
            return true;
        }
        // Chains the driver queued before DRIVER_OK (it may notify early) are served now.
        for (std::size_t i = 0; i < queues_.size(); ++i)
            if (queues_[i].active()) notify(i);
    }
    return true;
}

void VirtioDevice::reset() noexcept {
    reset_device();
    for (auto& q : queues_) q.reset();
    const std::uint32_t gen = state_.config_generation;
    state_ = VirtioState{};
    state_.config_generation = gen;
    isr_.store(0, std::memory_order_release);
}

DeviceState VirtioDevice::save_virtio() const {
    DeviceState s;
    s.virtio = state_;
    s.interrupt_status = isr_.load(std::memory_order_acquire);
    s.queues.reserve(queues_.size());
    for (const auto& q : queues_) s.queues.push_back(q.state());
    return s;
}

void VirtioDevice::restore_virtio(const DeviceState& s) {
    const std::string what = "virtio " + name() + " state: ";
    if (s.queues.size() != queues_.size())
        throw ConfigError(what + std::to_string(s.queues.size()) + " queues saved, the device has " + std::to_string(queues_.size()));
    const std::uint32_t st = s.virtio.status;
    constexpr std::uint32_t known = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK |
                                    status::DEVICE_NEEDS_RESET | status::FAILED;
    auto implies = [st](std::uint32_t b, std::uint32_t prerequisite) { return !(st & b) || (st & prerequisite); };
    if ((st & ~known) || !implies(status::DRIVER, status::ACKNOWLEDGE) || !implies(status::FEATURES_OK, status::DRIVER) ||
        !implies(status::DRIVER_OK, status::FEATURES_OK))
        throw ConfigError(what + "device status " + std::to_string(st) + " is not one a driver can reach");
    if ((st & status::FEATURES_OK) &&
        ((s.virtio.acked_features & ~offered_features()) || !(s.virtio.acked_features & bit(feature::VERSION_1))))
        throw ConfigError(what + "negotiated features are not among those the device offers");
    if (s.interrupt_status & ~(INT_USED_RING | INT_CONFIG))
        throw ConfigError(what + "unknown interrupt status bits " + std::to_string(s.interrupt_status));

    state_ = s.virtio;
    const bool run = running();
    for (std::size_t i = 0; i < queues_.size(); ++i) {
        const QueueState& q = s.queues[i];
        const std::string where = what + "queue " + std::to_string(i) + ": ";
        if (q.active && !(st & status::DRIVER_OK)) throw ConfigError(where + "active before DRIVER_OK");
        if (run && q.ready && !q.active) throw ConfigError(where + "ready but not active on a running device");
        if (q.active && (q.event_idx != negotiated(feature::RING_EVENT_IDX) || q.indirect != negotiated(feature::RING_INDIRECT_DESC)))
            throw ConfigError(where + "ring features differ from the negotiated ones");
        try {
            queues_[i].restore(q, mem_);
        } catch (const ConfigError& e) {
            throw ConfigError(where + e.what());
        }
    }
    if (run && !activate()) throw ConfigError(what + "the device could not be activated on its new host resources");
    isr_.store(s.interrupt_status, std::memory_order_release);
}

void VirtioDevice::resume_after_restore() noexcept {
    if (isr_.load(std::memory_order_acquire) != 0) irq_.trigger();
    if (!running()) return;
    for (std::size_t i = 0; i < queues_.size(); ++i)
        if (queues_[i].active()) notify(i);
}

void VirtioDevice::refire_interrupt() noexcept {
    if (isr_.load(std::memory_order_acquire) != 0) irq_.trigger();
}

void VirtioDevice::signal_used(Queue& q) noexcept {
    if (!q.needs_interrupt()) return;
    isr_.fetch_or(INT_USED_RING, std::memory_order_acq_rel);
    irq_.trigger();
}

void VirtioDevice::config_changed() noexcept {
    ++state_.config_generation;
    isr_.fetch_or(INT_CONFIG, std::memory_order_acq_rel);
    irq_.trigger();
}

Queue::PopResult VirtioDevice::pop_chain(Queue& q, std::atomic<std::uint64_t>& fails, bool rearm) noexcept {
    for (;;) {
        Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty && rearm && q.enable_notification()) continue;
        if (r.status == Queue::PopStatus::Broken) {
            bump(fails);
            fail(r.error);
        }
        return r;
    }
}

void VirtioDevice::fail(const std::string& why) noexcept {
    if (state_.status & status::DEVICE_NEEDS_RESET) return;
    needs_reset_.fetch_add(1, std::memory_order_relaxed);
    LOG_WARN("virtio %s: %s; device needs reset", name().c_str(), why.c_str());
    state_.status |= status::DEVICE_NEEDS_RESET;
    config_changed();
}

} // namespace ember::virtio
