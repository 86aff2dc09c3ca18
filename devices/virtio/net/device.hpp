#pragma once
// virtio-net (virtio 1.2 §5.1) on a TAP or a passt stream (backend.hpp): one receive and one transmit queue, served on the event
// loop. A frame that finds no receive buffers waits (the TAP is not read meanwhile) until the
// driver posts some; frames are dropped only when they can never fit, and then counted.

#include "devices/virtio/device.hpp"
#include "devices/virtio/limiter.hpp"
#include "devices/virtio/net/backend.hpp"
#include "devices/virtio/net/request.hpp"
#include "devices/virtio/net/config.hpp"

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <memory>
#include <optional>

namespace ember::virtio::net {

// §5.1.3 feature bits.
inline constexpr unsigned F_CSUM = 0;
inline constexpr unsigned F_GUEST_CSUM = 1;
inline constexpr unsigned F_MTU = 3;
inline constexpr unsigned F_MAC = 5;
inline constexpr unsigned F_GUEST_TSO4 = 7;
inline constexpr unsigned F_GUEST_TSO6 = 8;
inline constexpr unsigned F_HOST_TSO4 = 11;
inline constexpr unsigned F_HOST_TSO6 = 12;
inline constexpr unsigned F_MRG_RXBUF = 15;

// Firecracker's net metric names (NetDeviceMetrics), the ones that apply.
struct NetMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, event_fails{0}, no_rx_avail_buffer{0}, rx_queue_event_count{0},
        rx_tap_event_count{0}, rx_bytes_count{0}, rx_packets_count{0}, rx_fails{0}, rx_count{0}, tap_read_fails{0},
        tap_write_fails{0}, tx_bytes_count{0}, tx_malformed_frames{0}, tx_fails{0}, tx_count{0}, tx_packets_count{0},
        tx_queue_event_count{0}, rx_event_rate_limiter_count{0}, rx_rate_limiter_throttled{0}, tx_rate_limiter_event_count{0},
        tx_rate_limiter_throttled{0};
    MetricValues values() const {
        return {
                {"activate_fails", value_of(activate_fails)},
                {"event_fails", value_of(event_fails)},
                {"no_rx_avail_buffer", value_of(no_rx_avail_buffer)},
                {"rx_queue_event_count", value_of(rx_queue_event_count)},
                {"rx_tap_event_count", value_of(rx_tap_event_count)},
                {"rx_bytes_count", value_of(rx_bytes_count)},
                {"rx_packets_count", value_of(rx_packets_count)},
                {"rx_fails", value_of(rx_fails)},
                {"rx_count", value_of(rx_count)},
                {"tap_read_fails", value_of(tap_read_fails)},
                {"tap_write_fails", value_of(tap_write_fails)},
                {"tx_bytes_count", value_of(tx_bytes_count)},
                {"tx_malformed_frames", value_of(tx_malformed_frames)},
                {"tx_fails", value_of(tx_fails)},
                {"tx_count", value_of(tx_count)},
                {"tx_packets_count", value_of(tx_packets_count)},
                {"tx_queue_event_count", value_of(tx_queue_event_count)},
                {"rx_event_rate_limiter_count", value_of(rx_event_rate_limiter_count)},
                {"rx_rate_limiter_throttled", value_of(rx_rate_limiter_throttled)},
                {"tx_rate_limiter_event_count", value_of(tx_rate_limiter_event_count)},
                {"tx_rate_limiter_throttled", value_of(tx_rate_limiter_throttled)}};
    }
};

// A virtio-net device's state: the generic part only. Everything else the device holds is
// derived (which TAP waits are armed) or host data: a frame read from the TAP and not yet
// delivered (up to 64 KiB) is not saved. The restored device drops it, as a full receive queue
// would; the guest's network stack recovers a lost frame as it does any other loss, and the
// saved state stays small plain values. (The saved device itself keeps and delivers it.)
struct NetState {
    DeviceState virtio;
    bool operator==(const NetState&) const = default;
};

class NetDevice final : public VirtioDevice {
public:
    static constexpr std::uint16_t QUEUE_SIZE = 256;
    static constexpr std::size_t RX = 0, TX = 1;

    NetDevice(const GuestMemory& mem, boost::asio::io_context& io, NetConfig cfg, std::unique_ptr<Tap> tap);
    ~NetDevice() override;

    // Snapshot restore: the device on `tap` in state `s`; a running device sets the TAP's
    // offloads again and is notified on both queues, which resumes reading the TAP. Throws
    // ConfigError when the state does not fit (VirtioDevice::restore_virtio) or the TAP refuses
    // the negotiated offloads.
    static std::shared_ptr<NetDevice> restore(const GuestMemory& mem, boost::asio::io_context& io, NetConfig cfg, std::unique_ptr<Tap> tap,
                                              const NetState& s);
    // Transmission and reception are synchronous (nothing in flight between events), so saving
    // needs no draining. The VM must be paused.
    NetState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override;
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    bool activate() noexcept override;
    void reset_device() noexcept override;
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "net " + cfg_.iface_id; }

    // PATCH /network-interfaces/{id} (Firecracker's RateLimiterUpdate for each direction; an
    // absent update changes nothing). Updates config() to the limiters now in force.
    void update_rate_limiters(const RateLimiterUpdate& rx, const RateLimiterUpdate& tx) noexcept;

    const NetConfig& config() const noexcept { return cfg_; }
    const NetMetrics& metrics() const noexcept { return metrics_; }

private:
    void rx_loop() noexcept;
    // Puts the staged frame into receive buffers; false when there are not enough of them yet
    // (rx_seen_avail_ is then the available index up to which they were all too few).
    bool deliver() noexcept;
    void tx_loop() noexcept;
    void arm_rx() noexcept;
    void arm_tx() noexcept;
    void on_rx_limiter_expiry() noexcept;
    void on_tx_limiter_expiry() noexcept;

    NetConfig cfg_;
    std::unique_ptr<Tap> tap_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> tap_sd_;
    bool rx_armed_ = false, tx_armed_ = false, link_down_ = false;
    std::vector<std::byte> frame_;
    std::size_t frame_len_ = 0; // bytes staged from the TAP, 0 when none
    std::uint16_t rx_seen_avail_ = 0;
    std::vector<iovec> iov_;
    struct Used {
        std::uint16_t head;
        std::uint32_t len;
    };
    std::vector<Used> used_;
    NetMetrics metrics_;
    // Last: their timer handlers use the members above. A frame the receive limiter refuses
    // stays staged in frame_ (the TAP is not read) until its timer fires; a transmit chain it
    // refuses goes back to the available ring.
    QueueLimiter rx_limiter_, tx_limiter_;
};

} // namespace ember::virtio::net
