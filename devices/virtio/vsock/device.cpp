#include "devices/virtio/vsock/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <cstring>

namespace ember::virtio::vsock {

VsockDevice::VsockDevice(const GuestMemory& mem, boost::asio::io_context& io, VsockConfig cfg)
    : VirtioDevice(mem, {QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE}), cfg_(std::move(cfg)), bounce_(MAX_PAYLOAD) {
    if (cfg_.guest_cid < MIN_GUEST_CID || cfg_.guest_cid > 0xffffffffu - 1)
        throw ConfigError("vsock: guest_cid " + std::to_string(cfg_.guest_cid) + " is reserved (must be 3 to 4294967294)");
    pkt_.payload.reserve(QUEUE_SIZE);
    muxer_ = std::make_unique<Muxer>(io, mutex(), cfg_.guest_cid, cfg_.uds_path, metrics_, [this] { rx_loop(); });
    muxer_->listen();
}

VsockState VsockDevice::save() {
    std::lock_guard lk(mutex());
    return VsockState{save_virtio(), cfg_.guest_cid};
}

std::shared_ptr<VsockDevice> VsockDevice::restore(const GuestMemory& mem, boost::asio::io_context& io, VsockConfig cfg, const VsockState& s) {
    if (s.guest_cid != cfg.guest_cid)
        throw ConfigError("vsock: saved guest_cid " + std::to_string(s.guest_cid) + " differs from the configured " + std::to_string(cfg.guest_cid));
    auto dev = std::make_shared<VsockDevice>(mem, io, std::move(cfg));
    std::lock_guard lk(dev->mutex());
    dev->restore_virtio(s.virtio);
    if (dev->running()) (void)dev->send_transport_reset();
    dev->resume_after_restore();
    return dev;
}

std::uint32_t VsockDevice::device_type() const noexcept { return device_id::VSOCK; }

void VsockDevice::read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept {
    vsock::read_config(cfg_.guest_cid, offset, data);
}

bool VsockDevice::activate() noexcept {
    muxer_->start();
    return true;
}

void VsockDevice::reset_device() noexcept { muxer_->reset(); }

std::size_t VsockDevice::connection_count() noexcept {
    std::lock_guard lk(mutex());
    return muxer_->connection_count();
}

void VsockDevice::process_queue(std::size_t index) noexcept {
    if (index == TX) {
        bump(metrics_.tx_queue_event_count);
        tx_loop();
        rx_loop(); // replies (RESPONSE, RST, CREDIT_UPDATE) the packets asked for
    } else if (index == RX) {
        bump(metrics_.rx_queue_event_count);
        rx_loop();
    }
    // EVT: buffers are kept for TRANSPORT_RESET.
}

void VsockDevice::tx_loop() noexcept {
    Queue& q = queues()[TX];
    if (!running() || !q.active()) return;
    bool used = false;
    for (;;) {
        const Queue::PopResult r = pop_chain(q, metrics_.tx_queue_event_fails);
        if (r.status == Queue::PopStatus::Empty) break;
        if (r.status == Queue::PopStatus::Broken) return;
        const TxError e = r.status == Queue::PopStatus::Chain ? parse_tx(r.descs, pkt_) : TxError::TooShort;
        if (e != TxError::None) {
            // Firecracker drops a malformed packet and goes on (vsock/device.rs process_tx).
            bump(metrics_.tx_queue_event_fails);
            LOG_DEBUG("virtio %s: tx chain %u: %s", name().c_str(), r.head, r.error ? r.error : to_string(e));
        } else {
            bump(metrics_.tx_packets_count);
            muxer_->send(pkt_.hdr, pkt_.payload);
        }
        q.add_used(r.head, 0);
        used = true;
    }
    if (used) signal_used(q);
}

void VsockDevice::rx_loop() noexcept {
    Queue& q = queues()[RX];
    if (!running() || !q.active()) return;
    bool used = false;
    while (muxer_->has_pending_rx()) {
        const Queue::PopResult r = pop_chain(q, metrics_.rx_queue_event_fails);
        if (r.status == Queue::PopStatus::Empty) break; // the next rxq notification resumes
        if (r.status == Queue::PopStatus::Broken) return;
        std::uint32_t room = 0;
        const RxError e = r.status == Queue::PopStatus::Chain ? rx_capacity(r.descs, room) : RxError::TooShort;
        if (e != RxError::None) {
            bump(metrics_.rx_queue_event_fails);
            LOG_DEBUG("virtio %s: rx chain %u: %s", name().c_str(), r.head, r.error ? r.error : to_string(e));
            q.add_used(r.head, 0);
            used = true;
            continue;
        }
        Header h;
        std::uint32_t len = 0;
        if (!muxer_->next_rx(h, std::span<std::byte>(bounce_.data(), room), len)) {
            q.undo_pop(1);
            break;
        }
        const std::uint32_t n = write_rx(r.descs, h, std::span<const std::byte>(bounce_.data(), len));
        q.add_used(r.head, n);
        used = true;
        bump(metrics_.rx_packets_count);
    }
    if (used) signal_used(q);
}

bool VsockDevice::send_transport_reset() noexcept {
    Queue& q = queues()[EVT];
    if (!q.active()) return false;
    const Queue::PopResult r = q.pop();
    if (r.status != Queue::PopStatus::Chain) {
        if (r.status == Queue::PopStatus::BadChain) q.add_used(r.head, 0);
        return false;
    }
    // struct virtio_vsock_event { le32 id; } into a device-writable buffer of at least 4 bytes.
    std::uint32_t written = 0;
    if (r.descs.front().device_writable && r.descs.front().len >= EVENT_LEN) {
        const std::byte ev[EVENT_LEN] = {};
        std::memcpy(r.descs.front().host, ev, EVENT_LEN); // id 0: TRANSPORT_RESET
        written = EVENT_LEN;
    }
    q.add_used(r.head, written);
    signal_used(q);
    return written != 0;
}

} // namespace ember::virtio::vsock
