#include "devices/virtio/net/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace ember::virtio::net {
NetDevice::NetDevice(const GuestMemory& mem, boost::asio::io_context& io, NetConfig cfg, std::unique_ptr<Tap> tap)
    : VirtioDevice(mem, {QUEUE_SIZE, QUEUE_SIZE}), cfg_(std::move(cfg)), tap_(std::move(tap)), frame_(MAX_FRAME_WITH_HDR),
      rx_limiter_(io, cfg_.rx_rate_limiter, [this] { on_rx_limiter_expiry(); }),
      tx_limiter_(io, cfg_.tx_rate_limiter, [this] { on_tx_limiter_expiry(); }) {
    const int fd = ::dup(tap_->fd());
    if (fd < 0) throw SystemError("virtio-net: dup of the TAP fd", errno);
    tap_sd_ = std::make_unique<boost::asio::posix::stream_descriptor>(io, fd);
    iov_.reserve(QUEUE_SIZE);
    used_.reserve(QUEUE_SIZE);
}

NetDevice::~NetDevice() {
    boost::system::error_code ec;
    tap_sd_->close(ec);
}

NetState NetDevice::save() {
    std::lock_guard lk(mutex());
    return NetState{save_virtio()};
}

std::shared_ptr<NetDevice> NetDevice::restore(const GuestMemory& mem, boost::asio::io_context& io, NetConfig cfg, std::unique_ptr<Tap> tap,
                                              const NetState& s) {
    auto dev = std::make_shared<NetDevice>(mem, io, std::move(cfg), std::move(tap));
    std::lock_guard lk(dev->mutex());
    dev->restore_virtio(s.virtio);
    dev->resume_after_restore();
    return dev;
}

std::uint32_t NetDevice::device_type() const noexcept { return device_id::NET; }

std::uint64_t NetDevice::device_features() const noexcept {
    // Checksum and segmentation offloads only where the link carries the virtio-net header.
    std::uint64_t f = bit(F_MRG_RXBUF);
    if (tap_->offloads())
        f |= bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_HOST_TSO4) | bit(F_HOST_TSO6) | bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6);
    if (cfg_.guest_mac) f |= bit(F_MAC);
    if (cfg_.mtu) f |= bit(F_MTU);
    return f;
}

void NetDevice::read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept {
    // struct virtio_net_config (§5.1.4): mac, status, max_virtqueue_pairs, mtu.
    std::uint8_t c[12] = {};
    if (cfg_.guest_mac) std::memcpy(c, cfg_.guest_mac->bytes().data(), 6);
    const std::uint16_t pairs = 1, mtu = cfg_.mtu.value_or(0);
    std::memcpy(c + 8, &pairs, 2);
    std::memcpy(c + 10, &mtu, 2);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = offset < sizeof c && i < sizeof c - offset ? c[offset + i] : 0;
}

bool NetDevice::activate() noexcept {
    // The TAP may hand us what the driver accepts (§5.1.6.4): checksum and TSO offloads.
    unsigned flags = 0;
    if (negotiated(F_GUEST_CSUM)) {
        flags |= TAP_F_CSUM;
        if (negotiated(F_GUEST_TSO4)) flags |= TAP_F_TSO4;
        if (negotiated(F_GUEST_TSO6)) flags |= TAP_F_TSO6;
    }
    if (!tap_->set_offload(flags)) {
        bump(metrics_.activate_fails);
        return false;
    }
    return true;
}

void NetDevice::reset_device() noexcept {
    // Asio objects are left alone here (this runs on a vCPU thread): an armed TAP wait finds the
    // device not running and does nothing.
    frame_len_ = 0;
    (void)tap_->set_offload(0);
}

void NetDevice::process_queue(std::size_t index) noexcept {
    if (index == RX) {
        bump(metrics_.rx_queue_event_count);
        rx_loop();
    } else if (index == TX) {
        bump(metrics_.tx_queue_event_count);
        tx_loop();
    }
}

void NetDevice::on_rx_limiter_expiry() noexcept {
    std::lock_guard lk(mutex());
    rx_limiter_.unblock();
    bump(metrics_.rx_event_rate_limiter_count);
    if (running() && queues()[RX].active()) rx_loop();
}

void NetDevice::on_tx_limiter_expiry() noexcept {
    std::lock_guard lk(mutex());
    tx_limiter_.unblock();
    bump(metrics_.tx_rate_limiter_event_count);
    if (running() && queues()[TX].active()) tx_loop();
}

void NetDevice::update_rate_limiters(const RateLimiterUpdate& rx, const RateLimiterUpdate& tx) noexcept {
    std::lock_guard lk(mutex());
    rx_limiter_.update(rx);
    tx_limiter_.update(tx);
    cfg_.rx_rate_limiter = rx_limiter_.config();
    cfg_.tx_rate_limiter = tx_limiter_.config();
    // Frames held back by the old limits go now (each loop stops again if still limited).
    if (running() && queues()[RX].active()) rx_loop();
    if (running() && queues()[TX].active()) tx_loop();
}

void NetDevice::arm_rx() noexcept {
    if (rx_armed_) return;
    rx_armed_ = true;
    tap_sd_->async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
        if (ec) return; // closed: the device is gone
        std::lock_guard lk(mutex());
        rx_armed_ = false;
        bump(metrics_.rx_tap_event_count);
        if (running() && queues()[RX].active()) rx_loop();
    });
}

void NetDevice::arm_tx() noexcept {
    if (tx_armed_) return;
    tx_armed_ = true;
    tap_sd_->async_wait(boost::asio::posix::stream_descriptor::wait_write, [this](const boost::system::error_code& ec) {
        if (ec) return;
        std::lock_guard lk(mutex());
        tx_armed_ = false;
        if (running() && queues()[TX].active()) tx_loop();
    });
}

void NetDevice::rx_loop() noexcept {
    Queue& q = queues()[RX];
    if (!q.active()) return;
    bool delivered = false;
    for (;;) {
        if (frame_len_ == 0) {
            const ssize_t n = tap_->read_frame(frame_);
            if (n < 0) {
                if (errno == EINTR) continue;
                if (errno == EPIPE || errno == EPROTO) {
                    // The link's peer is gone or broke the framing: nothing more will come.
                    if (!link_down_) LOG_WARN("virtio %s: the link %s is down (%s)", name().c_str(), tap_->name().c_str(), std::strerror(errno));
                    link_down_ = true;
                    break;
                }
                if (errno != EAGAIN) bump(metrics_.tap_read_fails);
                arm_rx();
                break;
            }
            if (static_cast<std::size_t>(n) < VNET_HDR_LEN) {
                bump(metrics_.rx_fails);
                continue;
            }
            frame_len_ = static_cast<std::size_t>(n);
        }
        // Firecracker's rate_limited_rx_single_frame: one op and the frame's bytes, given back
        // if the frame cannot be delivered yet. Refused: the frame waits for the timer.
        if (!rx_limiter_.admit(frame_len_)) {
            bump(metrics_.rx_rate_limiter_throttled);
            break;
        }
        if (!deliver()) {
            rx_limiter_.refund(frame_len_);
            // Too few buffers: keep the frame and stop reading the TAP until the driver adds
            // more (its notification calls rx_loop again). Retry at once only if it already
            // has: the buffers deliver() gave back are still available, and retrying on them
            // alone would spin the event loop for as long as the driver adds nothing.
            bump(metrics_.no_rx_avail_buffer);
            if (q.enable_notification(rx_seen_avail_)) continue;
            break;
        }
        delivered = true;
        if (!running()) break; // deliver() may have failed the device
    }
    if (delivered) signal_used(q);
}

bool NetDevice::deliver() noexcept {
    Queue& q = queues()[RX];
    const bool mergeable = negotiated(F_MRG_RXBUF);
    used_.clear();
    std::size_t done = 0;
    std::byte* num_buffers[2] = {nullptr, nullptr};
    while (done < frame_len_) {
        // Without rearm: the caller waits for buffers past what it saw (rx_seen_avail_).
        const Queue::PopResult r = pop_chain(q, metrics_.event_fails, false);
        if (r.status == Queue::PopStatus::Empty) {
            const auto taken = static_cast<std::uint16_t>(used_.size());
            q.undo_pop(taken);
            if (taken == q.state().size) {
                // Every buffer the ring can hold is too little for this frame: waiting cannot
                // help (§5.1.6.3.1 asks drivers for enough room); drop it, keep the buffers.
                bump(metrics_.rx_fails);
                frame_len_ = 0;
                return true;
            }
            rx_seen_avail_ = static_cast<std::uint16_t>(q.state().next_avail + taken);
            return false;
        }
        if (r.status == Queue::PopStatus::Broken) {
            frame_len_ = 0;
            return true;
        }
        const std::size_t cap = r.status == Queue::PopStatus::Chain ? writable_capacity(r.descs) : 0;
        const bool first = used_.empty();
        if (cap == 0 || (first && cap < VNET_HDR_LEN) || (!mergeable && cap < frame_len_)) {
            // A broken chain, or (without MRG_RXBUF) one too small for this frame: the frame
            // cannot be delivered. Every chain taken for it goes back empty; the frame is dropped.
            bump(metrics_.rx_fails);
            LOG_DEBUG("virtio %s: receive buffer of %zu bytes for a %zu-byte frame: dropped", name().c_str(), cap, frame_len_);
            for (const auto& u : used_) q.add_used(u.head, 0, false);
            q.add_used(r.head, 0, true);
            frame_len_ = 0;
            return true;
        }
        if (first) {
            // num_buffers lives at bytes 10-11 of the header, inside the first chain.
            std::size_t off = NUM_BUFFERS_OFFSET;
            std::size_t k = 0;
            for (const auto& d : r.descs) {
                while (k < 2 && off < d.len) num_buffers[k++] = d.host + off++;
                if (k == 2) break;
                off -= d.len;
            }
        }
        const std::size_t n = copy_to_chain(r.descs, std::span<const std::byte>(frame_.data() + done, frame_len_ - done));
        used_.push_back({r.head, static_cast<std::uint32_t>(n)});
        done += n;
    }
    const auto count = static_cast<std::uint16_t>(used_.size());
    if (num_buffers[0] && num_buffers[1]) {
        *num_buffers[0] = static_cast<std::byte>(count & 0xff);
        *num_buffers[1] = static_cast<std::byte>(count >> 8);
    }
    // Every buffer of the frame becomes visible to the driver at once (§5.1.6.4.2).
    for (std::size_t i = 0; i < used_.size(); ++i) q.add_used(used_[i].head, used_[i].len, i + 1 == used_.size());
    bump(metrics_.rx_count);
    bump(metrics_.rx_packets_count);
    bump(metrics_.rx_bytes_count, frame_len_ - VNET_HDR_LEN);
    frame_len_ = 0;
    return true;
}

void NetDevice::tx_loop() noexcept {
    Queue& q = queues()[TX];
    if (!q.active()) return;
    if (tx_limiter_.blocked()) { // the limiter's timer resumes the queue
        bump(metrics_.tx_rate_limiter_throttled);
        return;
    }
    if (!tap_->flush()) { // the rest of a frame goes first
        arm_tx();
        return;
    }
    bool used = false;
    for (;;) {
        bool popped = false;
        for (;;) {
            const Queue::PopResult r = pop_chain(q, metrics_.event_fails, false);
            if (r.status == Queue::PopStatus::Empty) break;
            if (r.status == Queue::PopStatus::Broken) return;
            popped = true;
            std::size_t total = 0;
            const TxError e = r.status == Queue::PopStatus::Chain ? gather_tx(r.descs, iov_, total) : TxError::TooShort;
            if (e != TxError::None) {
                bump(metrics_.tx_malformed_frames);
                LOG_DEBUG("virtio %s: %s", name().c_str(), r.error ? r.error : to_string(e));
                q.add_used(r.head, 0);
                used = true;
                continue;
            }
            if (!tx_limiter_.admit(total)) {
                // Firecracker's process_tx: the chain goes back; the limiter's timer resumes.
                q.undo_pop(1);
                bump(metrics_.tx_rate_limiter_throttled);
                if (used) signal_used(q);
                return;
            }
            const ssize_t n = tap_->write_frame(iov_.data(), iov_.size(), total);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                // The TAP is full: retry this chain when it drains.
                tx_limiter_.refund(total);
                q.undo_pop(1);
                arm_tx();
                if (used) signal_used(q);
                return;
            }
            if (n < 0) {
                bump(metrics_.tap_write_fails);
                bump(metrics_.tx_fails);
            } else {
                bump(metrics_.tx_count);
                bump(metrics_.tx_packets_count);
                bump(metrics_.tx_bytes_count, total - VNET_HDR_LEN);
            }
            q.add_used(r.head, 0);
            used = true;
        }
        if (popped) continue;
        if (!q.enable_notification()) break;
    }
    if (tap_->pending()) arm_tx();
    if (used) signal_used(q);
}

} // namespace ember::virtio::net
