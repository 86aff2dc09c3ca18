#pragma once
// What every virtio device shares, independent of the transport: its queues, the device status
// and feature negotiation (virtio 1.2 §2.1, §2.2, §3.1), the interrupt status and line, and one
// eventfd per queue for notifications (fed by KVM ioeventfds without a VM exit).
//
// Threading: the transport (vCPU threads) and the device's event-loop handlers both run under
// mutex(), except the interrupt status and its acknowledgement, which are one atomic and taken
// without it (the driver's interrupt handler must not wait for a queue being served). Devices
// implement the virtual hooks; none of them may throw or block on the guest.

#include "vmm/base/irq.hpp"
#include "devices/virtio/queue.hpp"
#include "vmm/base/metrics.hpp"
#include "vmm/base/unique_fd.hpp"

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace ember {
class GuestMemory;
}

namespace ember::virtio {

// The generic part of a device's state, as plain values (snapshots save and load it).
struct VirtioState {
    std::uint32_t status = 0;
    std::uint64_t acked_features = 0;
    std::uint32_t config_generation = 0;
    std::uint32_t device_features_sel = 0;
    std::uint32_t driver_features_sel = 0;
    std::uint32_t queue_sel = 0;
    std::uint32_t shm_sel = 0;
    bool operator==(const VirtioState&) const = default;
};

// What every virtio device saves: the generic state, the interrupt status the driver has not
// acknowledged yet, and every queue (in queue order). Plain values: guest addresses and indices.
struct DeviceState {
    VirtioState virtio;
    std::uint32_t interrupt_status = 0;
    std::vector<QueueState> queues;
    bool operator==(const DeviceState&) const = default;
};

class VirtioDevice {
public:
    VirtioDevice(const GuestMemory& mem, std::vector<std::uint16_t> queue_max_sizes);
    virtual ~VirtioDevice() = default;
    VirtioDevice(const VirtioDevice&) = delete;
    VirtioDevice& operator=(const VirtioDevice&) = delete;

    // --- implemented by each device -------------------------------------------------------
    virtual std::uint32_t device_type() const noexcept = 0;
    // Offered features; VERSION_1, INDIRECT_DESC and RING_EVENT_IDX are added by this class.
    virtual std::uint64_t device_features() const noexcept = 0;
    virtual void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept = 0;
    virtual void write_config(std::uint64_t, std::span<const std::uint8_t>) noexcept {}
    // DRIVER_OK was accepted and every ready queue is valid: start serving. False fails the
    // device (DEVICE_NEEDS_RESET).
    virtual bool activate() noexcept = 0;
    // The driver reset the device (§2.4): finish or abandon in-flight work; the queues and the
    // generic state are reset by this class afterwards.
    virtual void reset_device() noexcept = 0;
    // The driver notified queue `index` (on the event loop, under mutex()).
    virtual void process_queue(std::size_t index) noexcept = 0;
    // Name for logs ("block vda", ...).
    virtual std::string name() const = 0;
    // Queues whose notifications are served on the notifying vCPU's thread, from the MMIO exit,
    // instead of through an ioeventfd and the event loop. Only for work that is bounded and never
    // blocks, where the driver busy-waits for the result (virtio-console output: see
    // vmm/base/console_output.hpp), so the event-loop round trip would be pure latency.
    virtual bool serve_on_vcpu(std::size_t) const noexcept { return false; }

    // --- used by the transport and the event loop ---------------------------------------------
    std::mutex& mutex() noexcept { return mu_; }
    std::uint64_t offered_features() const noexcept;
    std::vector<Queue>& queues() noexcept { return queues_; }
    VirtioState& state() noexcept { return state_; }
    const VirtioState& state() const noexcept { return state_; }
    bool running() const noexcept;
    // Status register write (§2.1.1, §3.1.1): accepted only in the order ACKNOWLEDGE, DRIVER,
    // FEATURES_OK, DRIVER_OK (FAILED at any time, 0 resets). Returns false for an illegal write,
    // which changes nothing.
    bool write_status(std::uint32_t value) noexcept;
    // DriverFeatures page write; only while DRIVER is set and FEATURES_OK is not (§3.1.1).
    bool write_driver_features(std::uint32_t page, std::uint32_t value) noexcept;
    // Queue configuration is writable between FEATURES_OK and DRIVER_OK.
    bool queue_config_writable() const noexcept;
    void reset() noexcept;

    std::uint32_t interrupt_status() const noexcept { return isr_.load(std::memory_order_acquire); }
    void ack_interrupt(std::uint32_t bits) noexcept { isr_.fetch_and(~bits, std::memory_order_acq_rel); }
    int irq_fd() const noexcept { return irq_.fd(); }
    int notify_fd(std::size_t q) const noexcept { return notify_[q].fd(); }
    void notify(std::size_t q) noexcept { (void)notify_[q].signal(); }
    std::uint64_t needs_reset_count() const noexcept { return needs_reset_.load(); }

    // The generic part of a snapshot. Needs mutex() held (device saves take it).
    DeviceState save_virtio() const;
    // Raises the interrupt again if InterruptStatus has bits pending. A restored VM calls it once
    // its irqchip and vCPUs hold their saved state: an edge raised before that (by
    // resume_after_restore, before KVM exists) lands in an irqchip that is then overwritten.
    void refire_interrupt() noexcept;

protected:
    // Snapshot restore of the generic part into a device fresh from its constructor, under
    // mutex(). Checks that the state is one this device could have reached: the queue count,
    // a status the driver could have written (§3.1.1 order), negotiated features among those
    // offered now (with VERSION_1), known interrupt bits, queues active only after DRIVER_OK
    // with the negotiated ring features, every ready queue active while the device runs, and
    // each queue against guest memory (Queue::restore). A running device's activate() hook is
    // called again (host resources are new). Throws ConfigError naming the device.
    void restore_virtio(const DeviceState& s);
    // Last step of a restore, once the device's own state is in place: re-raises the interrupt
    // if the saved status has bits pending (an extra edge is harmless: the driver reads
    // InterruptStatus) and notifies every active queue of a running device once, for the
    // notifications in flight when the state was saved (pop() finds nothing if there were none).
    void resume_after_restore() noexcept;

    // The pop step of every device's queue loop. Empty: nothing more to serve; with `rearm`,
    // only once notifications are enabled again and nothing was published meanwhile
    // (Queue::enable_notification; a chain that arrived in between is returned instead).
    // Broken: the ring is unusable; `fails` has been bumped and the device failed (fail()), so
    // the caller stops serving. Chain and BadChain are the caller's to serve and return.
    Queue::PopResult pop_chain(Queue& q, std::atomic<std::uint64_t>& fails, bool rearm = true) noexcept;
    // Used-buffer interrupt (§2.7.7), when `q` says the driver wants one.
    void signal_used(Queue& q) noexcept;
    // Configuration-change interrupt; bumps the config generation (§2.5.1, §4.2.2).
    void config_changed() noexcept;
    // The driver broke the protocol: DEVICE_NEEDS_RESET plus a config interrupt (§2.1.2). The
    // device stops serving until the driver resets it.
    void fail(const std::string& why) noexcept;
    bool negotiated(unsigned feature_bit) const noexcept;
    const GuestMemory& mem_;

private:
    std::mutex mu_;
    std::vector<Queue> queues_;
    std::vector<EventFd> notify_;
    EventFdIrq irq_;
    std::atomic<std::uint32_t> isr_{0};
    std::atomic<std::uint64_t> needs_reset_{0};
    VirtioState state_;
};

} // namespace ember::virtio
