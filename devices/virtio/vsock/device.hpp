#pragma once
// virtio-vsock (virtio 1.2 §5.10): rx, tx and event queues, stream sockets only, bridged to host
// unix sockets by a Muxer (backend.hpp, Firecracker's scheme). Served on the event loop: txq
// notifications hand guest packets to the muxer; packets for the guest go into rxq buffers as
// the driver posts them, and while it posts none the host sockets are not read.

#include "devices/virtio/device.hpp"
#include "devices/virtio/vsock/backend.hpp"
#include "devices/virtio/vsock/config.hpp"
#include "devices/virtio/vsock/request.hpp"

#include <boost/asio/io_context.hpp>
#include <memory>
#include <vector>

namespace ember::virtio::vsock {

// A vsock device's state. Connections are host resources and are not saved: as in Firecracker,
// a restored running device tells the driver TRANSPORT_RESET (§5.10.6.6), which drops the
// guest's connections, and the host's sockets are gone with the old process anyway.
struct VsockState {
    DeviceState virtio;
    std::uint64_t guest_cid = 0;
    bool operator==(const VsockState&) const = default;
};

class VsockDevice final : public VirtioDevice {
public:
    static constexpr std::uint16_t QUEUE_SIZE = 256; // Firecracker's vsock QUEUE_SIZE
    static constexpr std::size_t RX = 0, TX = 1, EVT = 2;

    // Binds cfg.uds_path (throws SystemError / ConfigError naming it).
    VsockDevice(const GuestMemory& mem, boost::asio::io_context& io, VsockConfig cfg);

    static std::shared_ptr<VsockDevice> restore(const GuestMemory& mem, boost::asio::io_context& io, VsockConfig cfg, const VsockState& s);
    VsockState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override { return 0; }
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    bool activate() noexcept override;
    void reset_device() noexcept override;
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "vsock " + cfg_.vsock_id.value_or("vsock"); }

    const VsockConfig& config() const noexcept { return cfg_; }
    const VsockMetrics& metrics() const noexcept { return metrics_; }
    std::size_t connection_count() noexcept;
    // Sends VIRTIO_VSOCK_EVENT_TRANSPORT_RESET if the driver posted an event buffer. Under mutex().
    bool send_transport_reset() noexcept;

private:
    void tx_loop() noexcept;
    void rx_loop() noexcept;

    VsockConfig cfg_;
    VsockMetrics metrics_;
    std::unique_ptr<Muxer> muxer_;
    TxPacket pkt_;
    std::vector<std::byte> bounce_;
};

} // namespace ember::virtio::vsock
