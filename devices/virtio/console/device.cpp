#include "devices/virtio/console/device.hpp"

#include "devices/virtio/chain.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/logger.hpp"

namespace ember::virtio::console {

ConsoleDevice::ConsoleDevice(const GuestMemory& mem, std::shared_ptr<ConsoleOutput> out, std::optional<ConsoleSize> size)
    : VirtioDevice(mem, {QUEUE_SIZE, QUEUE_SIZE}), out_(std::move(out)), size_(size) {
    iov_.reserve(QUEUE_SIZE);
}

ConsoleState ConsoleDevice::save() {
    std::lock_guard lk(mutex());
    return ConsoleState{save_virtio(), size_, size_announced_, input_waiting_};
}

std::shared_ptr<ConsoleDevice> ConsoleDevice::restore(const GuestMemory& mem, std::shared_ptr<ConsoleOutput> out,
                                                      std::optional<ConsoleSize> host_size, const ConsoleState& s) {
    // The saved size first: it decides the offered features, which restore_virtio checks.
    auto dev = std::make_shared<ConsoleDevice>(mem, std::move(out), s.size);
    std::lock_guard lk(dev->mutex());
    dev->restore_virtio(s.virtio);
    dev->size_announced_ = s.size_announced;
    dev->input_waiting_ = s.input_waiting;
    if (host_size) dev->resize(*host_size);
    dev->resume_after_restore();
    return dev;
}

std::uint32_t ConsoleDevice::device_type() const noexcept { return device_id::CONSOLE; }

std::uint64_t ConsoleDevice::device_features() const noexcept { return size_ ? bit(F_SIZE) : 0; }

void ConsoleDevice::read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept {
    console::read_config(size_.value_or(ConsoleSize{}), offset, data);
}

bool ConsoleDevice::activate() noexcept {
    // input_waiting_ survives: input offered before DRIVER_OK (or before a reset) is resumed by
    // the first receive-queue notification.
    size_announced_ = false;
    return true;
}

void ConsoleDevice::reset_device() noexcept {
    // Input not yet delivered stays with the VMM's reader; the next driver gets it.
    size_announced_ = false;
}

void ConsoleDevice::announce_size() noexcept {
    // Linux reads cols/rows only on a configuration interrupt, and drops it if port 0 does not
    // exist yet. The port exists by the time the driver fills receiveq0 or writes to hvc0
    // (add_port: fill_queue, init_port_console), so the first queue notification announces it.
    if (size_announced_ || !size_ || !negotiated(F_SIZE)) return;
    size_announced_ = true;
    config_changed();
}

void ConsoleDevice::resize(ConsoleSize size) noexcept {
    if (!size_ || *size_ == size) return;
    size_ = size;
    if (running() && negotiated(F_SIZE)) config_changed();
}

void ConsoleDevice::process_queue(std::size_t index) noexcept {
    announce_size();
    if (index == RX) {
        bump(metrics_.rx_queue_event_count);
        if (input_waiting_) {
            input_waiting_ = false;
            if (on_rx_space_) on_rx_space_();
        }
    } else if (index == TX) {
        bump(metrics_.tx_queue_event_count);
        tx_loop();
    }
}

std::size_t ConsoleDevice::enqueue_input(std::span<const std::uint8_t> bytes) noexcept {
    if (!running() || !queues()[RX].active()) {
        input_waiting_ = true;
        return 0;
    }
    Queue& q = queues()[RX];
    std::size_t done = 0;
    bool used = false;
    while (done < bytes.size()) {
        const Queue::PopResult r = pop_chain(q, metrics_.event_fails);
        if (r.status == Queue::PopStatus::Empty || r.status == Queue::PopStatus::Broken) {
            // After a broken ring, the driver's reset and new buffers bring the rest.
            input_waiting_ = true;
            break;
        }
        const std::size_t cap = r.status == Queue::PopStatus::Chain ? writable_capacity(r.descs) : 0;
        if (cap == 0) {
            // A read-only or zero-length receive buffer, or a malformed chain: return it unused.
            bump(metrics_.rx_fails);
            LOG_DEBUG("virtio %s: unusable receive chain %u: %s", name().c_str(), r.head, r.error ? r.error : "no writable bytes");
            q.add_used(r.head, 0);
            used = true;
            continue;
        }
        const auto* src = reinterpret_cast<const std::byte*>(bytes.data()) + done;
        const std::size_t n = copy_to_chain(r.descs, std::span<const std::byte>(src, bytes.size() - done));
        q.add_used(r.head, static_cast<std::uint32_t>(n));
        used = true;
        done += n;
        bump(metrics_.rx_count);
        bump(metrics_.rx_bytes_count, n);
    }
    if (used) signal_used(q);
    return done;
}

void ConsoleDevice::tx_loop() noexcept {
    Queue& q = queues()[TX];
    if (!q.active()) return;
    bool used = false;
    for (;;) {
        const Queue::PopResult r = pop_chain(q, metrics_.event_fails);
        if (r.status == Queue::PopStatus::Empty) break;
        if (r.status == Queue::PopStatus::Broken) return;
        std::size_t total = 0;
        const TxError e = r.status == Queue::PopStatus::Chain ? gather_output(r.descs, iov_, total) : TxError::DeviceWritable;
        if (e != TxError::None) {
            bump(metrics_.tx_malformed_chains);
            LOG_DEBUG("virtio %s: transmit chain %u: %s", name().c_str(), r.head, r.error ? r.error : to_string(e));
        } else {
            for (const auto& v : iov_) (void)out_->write(std::span<const std::uint8_t>(static_cast<const std::uint8_t*>(v.iov_base), v.iov_len));
            bump(metrics_.tx_count);
            bump(metrics_.tx_bytes_count, total);
        }
        // Consumed at once, whatever the host did with the bytes: hvc spins until it is.
        q.add_used(r.head, 0);
        used = true;
    }
    if (used) signal_used(q);
}

} // namespace ember::virtio::console
