#pragma once
// virtio-rng, the entropy device (virtio 1.2 §5.4; Firecracker's devices/virtio/rng): one
// requestq, no configuration space, no device feature bits (VERSION_1 and the ring features
// come from VirtioDevice). Every chain the driver posts is filled with host random bytes (at
// most MAX_REQUEST_BYTES of it) and returned at once with the length filled, on the event loop.
// An optional rate limiter (Firecracker's rng device: one op and the chain's bytes per request)
// holds chains back in the available ring until its timer fires.

#include "devices/virtio/device.hpp"
#include "devices/virtio/limiter.hpp"
#include "devices/virtio/rng/backend.hpp"
#include "devices/virtio/rng/config.hpp"
#include "devices/virtio/rng/request.hpp"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <memory>

namespace ember::virtio::rng {

// Firecracker's EntropyDeviceMetrics (devices/virtio/rng/metrics.rs), metrics group "entropy".
// entropy_rate_limiter_throttled counts requests put back by the limiter, rate_limiter_event_count
// its timer expiries.
struct EntropyMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, entropy_event_fails{0}, entropy_event_count{0}, entropy_bytes{0},
        host_rng_fails{0}, entropy_rate_limiter_throttled{0}, rate_limiter_event_count{0};
    MetricValues values() const {
        return {
                {"activate_fails", value_of(activate_fails)},
                {"entropy_event_fails", value_of(entropy_event_fails)},
                {"entropy_event_count", value_of(entropy_event_count)},
                {"entropy_bytes", value_of(entropy_bytes)},
                {"host_rng_fails", value_of(host_rng_fails)},
                {"entropy_rate_limiter_throttled", value_of(entropy_rate_limiter_throttled)},
                {"rate_limiter_event_count", value_of(rate_limiter_event_count)}};
    }
};

// A virtio-rng device's state: the generic part only. Every chain is returned as soon as it is
// taken (a throttled one is put back untaken), so nothing is ever in flight. The limiter's
// budget is not saved: a restored device starts with full buckets.
struct EntropyState {
    DeviceState virtio;
    bool operator==(const EntropyState&) const = default;
};

class EntropyDevice final : public VirtioDevice {
public:
    // Firecracker's FIRECRACKER_MAX_QUEUE_SIZE.
    static constexpr std::uint16_t QUEUE_SIZE = 256;
    static constexpr std::size_t REQUESTQ = 0;

    // `io` runs the rate limiter's timer (unused without cfg.rate_limiter).
    EntropyDevice(const GuestMemory& mem, boost::asio::io_context& io, EntropyConfig cfg,
                  std::unique_ptr<EntropySource> source = host_random());

    // Snapshot restore: the device in state `s`, drawing from `source`. Throws ConfigError when
    // the state does not fit (VirtioDevice::restore_virtio).
    static std::shared_ptr<EntropyDevice> restore(const GuestMemory& mem, boost::asio::io_context& io, EntropyConfig cfg,
                                                  std::unique_ptr<EntropySource> source, const EntropyState& s);
    // Nothing is in flight, so this is only a copy; the VM must be paused.
    EntropyState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override { return 0; }
    // §5.4.4: no configuration space; every byte reads 0 and writes are ignored.
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    bool activate() noexcept override { return true; }
    void reset_device() noexcept override {}
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "entropy"; }

    const EntropyConfig& config() const noexcept { return cfg_; }
    const EntropyMetrics& metrics() const noexcept { return metrics_; }

private:
    void on_limiter_expiry() noexcept;
    // Fills the gathered buffers; the bytes filled (all of them, or 0 when the host failed).
    std::size_t fill() noexcept;

    EntropyConfig cfg_;
    std::unique_ptr<EntropySource> source_;
    std::vector<iovec> iov_;
    bool warned_ = false;
    EntropyMetrics metrics_;
    QueueLimiter limiter_; // last: its timer handler uses the members above
};

} // namespace ember::virtio::rng
