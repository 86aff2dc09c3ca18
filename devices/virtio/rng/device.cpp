#include "devices/virtio/rng/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <cstring>

namespace ember::virtio::rng {

EntropyDevice::EntropyDevice(const GuestMemory& mem, boost::asio::io_context& io, EntropyConfig cfg,
                             std::unique_ptr<EntropySource> source)
    : VirtioDevice(mem, {QUEUE_SIZE}), cfg_(std::move(cfg)), source_(std::move(source)),
      limiter_(io, cfg_.rate_limiter, [this] { on_limiter_expiry(); }) {
    iov_.reserve(QUEUE_SIZE);
}

EntropyState EntropyDevice::save() {
    std::lock_guard lk(mutex());
    return EntropyState{save_virtio()};
}

std::shared_ptr<EntropyDevice> EntropyDevice::restore(const GuestMemory& mem, boost::asio::io_context& io, EntropyConfig cfg,
                                                      std::unique_ptr<EntropySource> source, const EntropyState& s) {
    auto dev = std::make_shared<EntropyDevice>(mem, io, std::move(cfg), std::move(source));
    std::lock_guard lk(dev->mutex());
    dev->restore_virtio(s.virtio);
    dev->resume_after_restore();
    return dev;
}

std::uint32_t EntropyDevice::device_type() const noexcept { return device_id::ENTROPY; }

void EntropyDevice::read_config(std::uint64_t, std::span<std::uint8_t> data) const noexcept {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
}

std::size_t EntropyDevice::fill() noexcept {
    std::size_t total = 0;
    for (const auto& v : iov_) {
        if (const int err = source_->fill(std::span(static_cast<std::byte*>(v.iov_base), v.iov_len)); err != 0) {
            bump(metrics_.host_rng_fails);
            // Once as a warning: a failing host fails every request, and the guest may post many.
            if (!warned_) LOG_WARN("virtio %s: the host random source failed: %s", name().c_str(), std::strerror(err));
            else LOG_DEBUG("virtio %s: the host random source failed: %s", name().c_str(), std::strerror(err));
            warned_ = true;
            return 0;
        }
        total += v.iov_len;
    }
    return total;
}

void EntropyDevice::on_limiter_expiry() noexcept {
    std::lock_guard lk(mutex());
    limiter_.unblock();
    bump(metrics_.rate_limiter_event_count);
    if (running()) process_queue(REQUESTQ);
}

void EntropyDevice::process_queue(std::size_t index) noexcept {
    if (index != REQUESTQ) return;
    Queue& q = queues()[REQUESTQ];
    if (!q.active()) return;
    // As Firecracker's process_entropy_queue_event: a blocked limiter leaves the queue to its
    // timer (on_limiter_expiry).
    if (limiter_.blocked()) {
        bump(metrics_.entropy_rate_limiter_throttled);
        return;
    }
    bool used = false;
    for (;;) {
        const Queue::PopResult r = pop_chain(q, metrics_.entropy_event_fails);
        if (r.status == Queue::PopStatus::Empty) break;
        if (r.status == Queue::PopStatus::Broken) return;
        std::size_t filled = 0;
        std::size_t total = 0;
        const RequestError e = r.status == Queue::PopStatus::Chain ? gather_buffers(r.descs, MAX_REQUEST_BYTES, iov_, total)
                                                                   : RequestError::DeviceReadable;
        const bool good = r.status == Queue::PopStatus::Chain && e == RequestError::None;
        if (good && total > 0 && !limiter_.admit(total)) {
            // Firecracker's rate_limit_request (rng/device.rs): one op and the request's bytes;
            // an empty request costs nothing. No budget: the chain goes back to the available
            // ring untouched, and the limiter's timer serves the queue again.
            q.undo_pop(1);
            bump(metrics_.entropy_rate_limiter_throttled);
            break;
        }
        bump(metrics_.entropy_event_count);
        if (!good) {
            // Returned unused, as Firecracker does with a chain it cannot parse.
            bump(metrics_.entropy_event_fails);
            LOG_DEBUG("virtio %s: request chain %u: %s", name().c_str(), r.head, r.error ? r.error : to_string(e));
        } else {
            filled = fill();
            if (filled != total) bump(metrics_.entropy_event_fails);
        }
        // filled <= MAX_REQUEST_BYTES, so it fits the used element's 32-bit length.
        q.add_used(r.head, static_cast<std::uint32_t>(filled));
        used = true;
        bump(metrics_.entropy_bytes, filled);
    }
    if (used) signal_used(q);
}

} // namespace ember::virtio::rng
