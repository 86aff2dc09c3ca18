#include "devices/virtio/balloon/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstring>

namespace ember::virtio::balloon {

namespace {

std::uint32_t pages_of(std::uint32_t mib) {
    if (mib > UINT32_MAX / PAGES_PER_MIB) throw ConfigError("Amount of pages requested is too large.");
    return mib * PAGES_PER_MIB;
}

// §5.5.4 config layout, 4 little-endian u32 fields.
constexpr std::uint64_t CFG_NUM_PAGES = 0, CFG_ACTUAL = 4, CFG_CMD_ID = 8, CFG_SIZE = 16;

} // namespace

std::vector<std::uint16_t> BalloonDevice::queue_sizes(const BalloonConfig& cfg) {
    std::vector<std::uint16_t> q{QUEUE_SIZE, QUEUE_SIZE};
    if (cfg.stats_polling_interval_s > 0) q.push_back(QUEUE_SIZE);
    if (cfg.free_page_hinting) q.push_back(QUEUE_SIZE);
    if (cfg.free_page_reporting) q.push_back(QUEUE_SIZE);
    return q;
}

BalloonDevice::BalloonDevice(const GuestMemory& mem, boost::asio::io_context& io, BalloonConfig cfg)
    : VirtioDevice(mem, queue_sizes(cfg)), io_(io), cfg_(cfg), num_pages_(pages_of(cfg.amount_mib)), timer_(io) {
    ranges_.reserve(MAX_PFNS_PER_CHAIN);
}

BalloonDevice::~BalloonDevice() = default;

std::uint32_t BalloonDevice::device_type() const noexcept { return device_id::BALLOON; }

std::uint64_t BalloonDevice::device_features() const noexcept {
    std::uint64_t f = 0;
    if (cfg_.stats_polling_interval_s > 0) f |= bit(feature::STATS_VQ);
    if (cfg_.deflate_on_oom) f |= bit(feature::DEFLATE_ON_OOM);
    if (cfg_.free_page_hinting) f |= bit(feature::FREE_PAGE_HINT);
    if (cfg_.free_page_reporting) f |= bit(feature::REPORTING);
    return f;
}

void BalloonDevice::read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept {
    std::uint8_t cfg[CFG_SIZE] = {};
    auto put = [&](std::uint64_t at, std::uint32_t v) {
        for (unsigned i = 0; i < 4; ++i) cfg[at + i] = static_cast<std::uint8_t>(v >> (8 * i));
    };
    put(CFG_NUM_PAGES, num_pages_);
    put(CFG_ACTUAL, actual_pages_);
    put(CFG_CMD_ID, hint_.host_cmd);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = offset + i < CFG_SIZE ? cfg[offset + i] : std::uint8_t{0};
}

void BalloonDevice::write_config(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept {
    // Only `actual` is the driver's to write (§5.5.6: it writes the balloon's size there); the
    // rest is read-only and poison_val unused without F_PAGE_POISON.
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint64_t at = offset + i;
        if (at < CFG_ACTUAL || at >= CFG_ACTUAL + 4) continue;
        const unsigned shift = static_cast<unsigned>(8 * (at - CFG_ACTUAL));
        actual_pages_ = (actual_pages_ & ~(std::uint32_t{0xff} << shift)) | std::uint32_t{data[i]} << shift;
    }
}

bool BalloonDevice::activate() noexcept {
    // Consecutive queue numbers for the roles whose feature was negotiated (Linux's init_vqs).
    std::size_t n = 0;
    roles_.fill(Role::Unused);
    roles_[n++] = Role::Inflate;
    roles_[n++] = Role::Deflate;
    if (negotiated(feature::STATS_VQ)) roles_[n++] = Role::Stats;
    if (negotiated(feature::FREE_PAGE_HINT)) roles_[n++] = Role::Hint;
    if (negotiated(feature::REPORTING)) roles_[n++] = Role::Report;
    for (std::size_t i = 0; i < n; ++i)
        if (i >= queues().size() || !queues()[i].active()) {
            // A queue the negotiated features need is missing: the driver skipped one.
            bump(metrics_.activate_fails);
            LOG_WARN("virtio balloon: queue %zu, needed by the negotiated features, is not ready", i);
            return false;
        }
    if (negotiated(feature::STATS_VQ) && cfg_.stats_polling_interval_s > 0) {
        try {
            schedule_stats(std::chrono::seconds(cfg_.stats_polling_interval_s));
        } catch (...) {
            bump(metrics_.activate_fails);
            return false;
        }
    }
    return true;
}

void BalloonDevice::reset_device() noexcept {
    // The held stats buffer belongs to the rings being reset; the timer finds nothing to return.
    stats_desc_.reset();
    roles_.fill(Role::Unused);
    actual_pages_ = 0;
}

void BalloonDevice::process_queue(std::size_t index) noexcept {
    if (index >= queues().size()) return;
    Queue& q = queues()[index];
    if (!q.active()) return;
    switch (role(index)) {
    case Role::Inflate: serve_pfns(q, true); break;
    case Role::Deflate: serve_pfns(q, false); break;
    case Role::Stats: serve_stats(q); break;
    case Role::Hint: serve_hint(q); break;
    case Role::Report: serve_report(q); break;
    case Role::Unused: break;
    }
}

void BalloonDevice::serve_pfns(Queue& q, bool inflate) noexcept {
    bump(inflate ? metrics_.inflate_count : metrics_.deflate_count);
    bool used = false;
    for (;;) {
        const Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty) {
            if (q.enable_notification()) continue;
            break;
        }
        if (r.status == Queue::PopStatus::Broken) {
            bump(metrics_.event_fails);
            fail(r.error);
            return;
        }
        RequestError e = RequestError::None;
        try {
            e = r.status == Queue::PopStatus::Chain ? parse_pfns(r.descs, mem_, ranges_) : RequestError::BadLength;
        } catch (...) { // allocation of the page list
            e = RequestError::TooLong;
        }
        if (e != RequestError::None) {
            // Returned untouched, as Firecracker skips a descriptor it cannot use.
            bump(metrics_.event_fails);
            LOG_DEBUG("virtio balloon: %s chain %u: %s", inflate ? "inflate" : "deflate", r.head, r.error ? r.error : to_string(e));
        } else if (inflate) {
            const DiscardResult d = discard_ranges(mem_, ranges_);
            inflated_pages_ += d.pages;
            if (d.error != 0) {
                bump(metrics_.event_fails);
                LOG_WARN("virtio balloon: giving inflated pages back failed: %s", std::strerror(d.error));
            }
        } else {
            // Deflated pages need nothing: the guest's next access faults a page in.
            for (const auto& pr : ranges_) deflated_pages_ += pr.pages;
        }
        q.add_used(r.head, 0);
        used = true;
    }
    if (used) signal_used(q);
}

void BalloonDevice::serve_stats(Queue& q) noexcept {
    bool used = false;
    for (;;) {
        const Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty) {
            if (q.enable_notification()) continue;
            break;
        }
        if (r.status == Queue::PopStatus::Broken) {
            bump(metrics_.event_fails);
            fail(r.error);
            return;
        }
        if (stats_desc_) {
            // §5.5.6.3: one buffer at a time. A second one returns the first, as Firecracker does.
            q.add_used(*stats_desc_, 0);
            stats_desc_.reset();
            used = true;
        }
        const RequestError e = r.status == Queue::PopStatus::Chain ? parse_stats(r.descs, stats_) : RequestError::BadLength;
        if (e == RequestError::None) bump(metrics_.stats_updates_count);
        else {
            bump(metrics_.stats_update_fails);
            LOG_DEBUG("virtio balloon: stats chain %u: %s", r.head, r.error ? r.error : to_string(e));
        }
        // Held either way: the driver only sends statistics again once it gets this buffer back.
        stats_desc_ = r.head;
    }
    if (used) signal_used(q);
}

void BalloonDevice::serve_hint(Queue& q) noexcept {
    bool used = false;
    for (;;) {
        const Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty) {
            if (q.enable_notification()) continue;
            break;
        }
        if (r.status == Queue::PopStatus::Broken) {
            bump(metrics_.event_fails);
            fail(r.error);
            return;
        }
        RequestError e = RequestError::None;
        try {
            e = r.status == Queue::PopStatus::Chain ? parse_hint(r.descs, mem_, hint_chain_) : RequestError::BadLength;
        } catch (...) {
            e = RequestError::TooLong;
        }
        if (e != RequestError::None) {
            bump(metrics_.free_page_hint_fails);
            LOG_DEBUG("virtio balloon: hint chain %u: %s", r.head, r.error ? r.error : to_string(e));
        } else if (hint_chain_.cmd_id) {
            hint_.guest_cmd = *hint_chain_.cmd_id;
            if (*hint_chain_.cmd_id == CMD_ID_STOP && hint_ack_on_stop_ && hint_.host_cmd >= CMD_ID_FIRST) {
                hint_.host_cmd = CMD_ID_DONE;
                if (running()) config_changed();
            }
        } else {
            // The driver keeps hinted pages until the host says DONE (or starts a new run), so
            // they can go now.
            bump(metrics_.free_page_hint_count);
            const DiscardResult d = discard_ranges(mem_, hint_chain_.ranges);
            bump(metrics_.free_page_hint_freed, d.pages * PAGE_BYTES);
            if (d.error != 0) bump(metrics_.free_page_hint_fails);
        }
        q.add_used(r.head, 0);
        used = true;
    }
    if (used) signal_used(q);
}

void BalloonDevice::serve_report(Queue& q) noexcept {
    bool used = false;
    for (;;) {
        const Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty) {
            if (q.enable_notification()) continue;
            break;
        }
        if (r.status == Queue::PopStatus::Broken) {
            bump(metrics_.event_fails);
            fail(r.error);
            return;
        }
        RequestError e = RequestError::None;
        try {
            e = r.status == Queue::PopStatus::Chain ? parse_report(r.descs, mem_, ranges_) : RequestError::BadLength;
        } catch (...) {
            e = RequestError::TooLong;
        }
        if (e != RequestError::None) {
            bump(metrics_.free_page_report_fails);
            LOG_DEBUG("virtio balloon: report chain %u: %s", r.head, r.error ? r.error : to_string(e));
        } else {
            // §5.5.6.6: reported pages are free in the guest until the buffer is returned.
            bump(metrics_.free_page_report_count);
            const DiscardResult d = discard_ranges(mem_, ranges_);
            bump(metrics_.free_page_report_freed, d.pages * PAGE_BYTES);
            if (d.error != 0) bump(metrics_.free_page_report_fails);
        }
        q.add_used(r.head, 0);
        used = true;
    }
    if (used) signal_used(q);
}

void BalloonDevice::trigger_stats_update() noexcept {
    if (!running() || !stats_desc_) return;
    for (std::size_t i = 0; i < queues().size(); ++i) {
        if (role(i) != Role::Stats || !queues()[i].active()) continue;
        queues()[i].add_used(*stats_desc_, 0);
        stats_desc_.reset();
        signal_used(queues()[i]);
        return;
    }
}

void BalloonDevice::schedule_stats(std::chrono::seconds first) {
    std::weak_ptr<BalloonDevice> weak = weak_from_this();
    if (weak.expired()) return; // not owned by a shared_ptr (tests): nothing runs the timer
    boost::asio::post(io_, [weak, first] {
        auto self = weak.lock();
        if (!self) return;
        self->timer_.expires_after(first);
        self->timer_.async_wait([weak](const boost::system::error_code& ec) {
            if (ec) return; // re-armed or cancelled
            if (auto s = weak.lock()) s->on_timer();
        });
    });
}

void BalloonDevice::on_timer() {
    std::uint16_t interval = 0;
    {
        std::lock_guard lk(mutex());
        if (!running()) return; // re-armed by the next activation
        trigger_stats_update();
        interval = cfg_.stats_polling_interval_s;
    }
    if (interval > 0) schedule_stats(std::chrono::seconds(interval));
}

void BalloonDevice::set_target_mib(std::uint32_t amount_mib) {
    const std::uint32_t pages = pages_of(amount_mib);
    std::lock_guard lk(mutex());
    num_pages_ = pages;
    cfg_.amount_mib = amount_mib;
    if (running()) config_changed();
}

void BalloonDevice::set_stats_interval(std::uint16_t seconds) {
    {
        std::lock_guard lk(mutex());
        if ((seconds == 0) != (cfg_.stats_polling_interval_s == 0))
            throw ConfigError("Cannot enable/disable the statistics after boot.");
        cfg_.stats_polling_interval_s = seconds;
        if (seconds == 0 || !running()) return;
    }
    // The first update right away, then every `seconds` (BalloonStatsUpdate in the API).
    schedule_stats(std::chrono::seconds(0));
}

BalloonStatsView BalloonDevice::stats() {
    std::lock_guard lk(mutex());
    return BalloonStatsView{num_pages_, actual_pages_, stats_};
}

void BalloonDevice::start_hinting(bool ack_on_stop) {
    std::lock_guard lk(mutex());
    // A fresh id each run; the driver abandons a run whose id changed.
    hint_last_run_ = hint_last_run_ >= CMD_ID_FIRST && hint_last_run_ < UINT32_MAX ? hint_last_run_ + 1 : CMD_ID_FIRST;
    hint_.host_cmd = hint_last_run_;
    hint_ack_on_stop_ = ack_on_stop;
    if (running()) config_changed();
}

void BalloonDevice::stop_hinting() {
    std::lock_guard lk(mutex());
    hint_.host_cmd = CMD_ID_DONE;
    if (running()) config_changed();
}

HintingStatus BalloonDevice::hinting_status() {
    std::lock_guard lk(mutex());
    return hint_;
}

BalloonConfig BalloonDevice::current_config() {
    std::lock_guard lk(mutex());
    return cfg_;
}

std::uint64_t BalloonDevice::inflated_pages() {
    std::lock_guard lk(mutex());
    return inflated_pages_;
}

std::uint64_t BalloonDevice::deflated_pages() {
    std::lock_guard lk(mutex());
    return deflated_pages_;
}

BalloonState BalloonDevice::save() {
    std::lock_guard lk(mutex());
    return BalloonState{save_virtio(),  num_pages_, actual_pages_,     cfg_.stats_polling_interval_s, stats_desc_, stats_,
                        hint_,          hint_ack_on_stop_, hint_last_run_, inflated_pages_, deflated_pages_};
}

std::shared_ptr<BalloonDevice> BalloonDevice::restore(const GuestMemory& mem, boost::asio::io_context& io, BalloonConfig cfg,
                                                      const BalloonState& s) {
    if ((cfg.stats_polling_interval_s == 0) != (s.stats_polling_interval_s == 0))
        throw ConfigError("balloon: saved statistics interval does not fit the configuration (the statsq differs)");
    cfg.stats_polling_interval_s = s.stats_polling_interval_s;
    if (s.num_pages % PAGES_PER_MIB != 0) throw ConfigError("balloon: saved target is not a whole number of MiB");
    cfg.amount_mib = s.num_pages / PAGES_PER_MIB;
    auto dev = std::make_shared<BalloonDevice>(mem, io, cfg);
    std::lock_guard lk(dev->mutex());
    dev->num_pages_ = s.num_pages;
    dev->actual_pages_ = s.actual_pages;
    dev->stats_ = s.stats;
    dev->hint_ = s.hinting;
    dev->hint_ack_on_stop_ = s.hint_ack_on_stop;
    dev->hint_last_run_ = s.hint_last_run;
    dev->inflated_pages_ = s.inflated_pages;
    dev->deflated_pages_ = s.deflated_pages;
    dev->restore_virtio(s.virtio);
    if (s.stats_desc) {
        // The held buffer is a chain the stats queue took and did not return.
        const auto it = std::find(dev->roles_.begin(), dev->roles_.end(), Role::Stats);
        const auto qi = static_cast<std::size_t>(it - dev->roles_.begin());
        if (!dev->running() || it == dev->roles_.end() || qi >= dev->queues().size())
            throw ConfigError("balloon: saved stats buffer without a running stats queue");
        const Queue& q = dev->queues()[qi];
        if (*s.stats_desc >= q.state().size || q.pending() == 0)
            throw ConfigError("balloon: saved stats buffer index is not a chain the stats queue holds");
        dev->stats_desc_ = s.stats_desc;
    }
    dev->resume_after_restore();
    return dev;
}

} // namespace ember::virtio::balloon
