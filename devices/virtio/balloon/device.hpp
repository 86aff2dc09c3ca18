#pragma once
// virtio-balloon, the traditional memory balloon (virtio 1.2 §5.5; Firecracker's
// devices/virtio/balloon). Queues, in this order, each present only when its feature is offered
// (Linux's init_vqs numbers the queues of negotiated features consecutively): inflateq,
// deflateq, statsq (F_STATS_VQ), free_page_vq (F_FREE_PAGE_HINT), reporting_vq (F_REPORTING).
// The roles are assigned at activation from the negotiated features.
//
// Configuration space (§5.5.4, struct virtio_balloon_config): num_pages (the host's target, read
// only), actual (written by the driver), free_page_hint_cmd_id (the host's hinting command, read
// only), poison_val (0: F_PAGE_POISON is not offered). Little-endian.
//
// Served on the event loop: inflated, hinted and reported pages are discarded from the host
// (backend.hpp); the statistics buffer is held and returned to the driver every
// stats_polling_interval_s (an Asio timer on the device's io_context), which makes the driver
// refill it (§5.5.6.3).

#include "devices/virtio/balloon/backend.hpp"
#include "devices/virtio/balloon/config.hpp"
#include "devices/virtio/balloon/request.hpp"
#include "devices/virtio/device.hpp"

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <optional>

namespace ember::virtio::balloon {

// Feature bits (§5.5.3).
namespace feature {
inline constexpr unsigned STATS_VQ = 1;
inline constexpr unsigned DEFLATE_ON_OOM = 2;
inline constexpr unsigned FREE_PAGE_HINT = 3;
inline constexpr unsigned REPORTING = 5;
} // namespace feature

// Firecracker's BalloonDeviceMetrics (devices/virtio/balloon/metrics.rs), metrics group
// "balloon", with the free-page hinting and reporting counters of its later releases.
struct BalloonMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, inflate_count{0}, stats_updates_count{0}, stats_update_fails{0},
            deflate_count{0}, event_fails{0}, free_page_report_count{0}, free_page_report_freed{0}, free_page_report_fails{0},
            free_page_hint_count{0}, free_page_hint_freed{0}, free_page_hint_fails{0};
    MetricValues values() const {
        return {{"activate_fails", value_of(activate_fails)},
                {"inflate_count", value_of(inflate_count)},
                {"stats_updates_count", value_of(stats_updates_count)},
                {"stats_update_fails", value_of(stats_update_fails)},
                {"deflate_count", value_of(deflate_count)},
                {"event_fails", value_of(event_fails)},
                {"free_page_report_count", value_of(free_page_report_count)},
                {"free_page_report_freed", value_of(free_page_report_freed)},
                {"free_page_report_fails", value_of(free_page_report_fails)},
                {"free_page_hint_count", value_of(free_page_hint_count)},
                {"free_page_hint_freed", value_of(free_page_hint_freed)},
                {"free_page_hint_fails", value_of(free_page_hint_fails)}};
    }
};

// The balloon's own state besides the generic part. Pages already discarded are not state: they
// are zero pages of the guest's memory.
struct BalloonState {
    DeviceState virtio;
    std::uint32_t num_pages = 0;
    std::uint32_t actual_pages = 0;
    std::uint16_t stats_polling_interval_s = 0;
    std::optional<std::uint16_t> stats_desc; // the held stats buffer (taken, not yet returned)
    GuestStats stats;
    HintingStatus hinting;
    bool hint_ack_on_stop = false;
    std::uint32_t hint_last_run = 0; // the last run's id (0: none yet)
    std::uint64_t inflated_pages = 0, deflated_pages = 0;
    bool operator==(const BalloonState&) const = default;
};

class BalloonDevice final : public VirtioDevice, public std::enable_shared_from_this<BalloonDevice> {
public:
    static constexpr std::uint16_t QUEUE_SIZE = 256; // Firecracker's FIRECRACKER_MAX_QUEUE_SIZE
    enum class Role { Inflate, Deflate, Stats, Hint, Report, Unused };

    // Throws ConfigError when amount_mib in pages does not fit 32 bits.
    BalloonDevice(const GuestMemory& mem, boost::asio::io_context& io, BalloonConfig cfg);
    ~BalloonDevice() override;

    // Snapshot restore: throws ConfigError when the state does not fit this configuration.
    static std::shared_ptr<BalloonDevice> restore(const GuestMemory& mem, boost::asio::io_context& io, BalloonConfig cfg,
                                                  const BalloonState& s);
    BalloonState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override;
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    void write_config(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override;
    bool activate() noexcept override;
    void reset_device() noexcept override;
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "balloon"; }

    // --- the API (each takes mutex()) ------------------------------------------------------------
    // PATCH /balloon: a new target; tells the driver with a configuration interrupt. Throws
    // ConfigError when the size in pages does not fit 32 bits.
    void set_target_mib(std::uint32_t amount_mib);
    // PATCH /balloon/statistics: a new interval and an update right away. Statistics cannot be
    // switched on or off once the device exists (the statsq is there or not): throws ConfigError
    // with Firecracker's message (BalloonConfigError::InvalidStatsUpdate) when `seconds` is 0 and
    // the interval is not, or the reverse.
    void set_stats_interval(std::uint16_t seconds);
    BalloonStatsView stats();
    // /balloon/hinting/{start,stop,status}: a new run (a fresh command id), its end (DONE), and
    // the ids exchanged. With ack_on_stop, the device answers the driver's STOP with DONE.
    void start_hinting(bool ack_on_stop);
    void stop_hinting();
    HintingStatus hinting_status();
    const BalloonConfig& config() const noexcept { return cfg_; }
    // The current configuration: the target and the interval as last set.
    BalloonConfig current_config();
    const BalloonMetrics& metrics() const noexcept { return metrics_; }
    // Pages the driver handed over (inflate) and took back (deflate) since the device started.
    std::uint64_t inflated_pages();
    std::uint64_t deflated_pages();

    // The timer's work: gives the held stats buffer back so the driver refills it. Public for
    // tests. Under mutex().
    void trigger_stats_update() noexcept;
    // Which queue plays which role (after activation).
    Role role(std::size_t index) const noexcept { return index < roles_.size() ? roles_[index] : Role::Unused; }

private:
    static std::vector<std::uint16_t> queue_sizes(const BalloonConfig& cfg);
    void serve_pfns(Queue& q, bool inflate) noexcept;
    void serve_stats(Queue& q) noexcept;
    void serve_hint(Queue& q) noexcept;
    void serve_report(Queue& q) noexcept;
    // Arms the stats timer on the event loop (from any thread): first expiry after `first`.
    void schedule_stats(std::chrono::seconds first);
    void on_timer();

    boost::asio::io_context& io_;
    BalloonConfig cfg_;
    std::uint32_t num_pages_ = 0;
    std::uint32_t actual_pages_ = 0;
    std::optional<std::uint16_t> stats_desc_;
    GuestStats stats_;
    HintingStatus hint_;
    bool hint_ack_on_stop_ = false;
    std::uint32_t hint_last_run_ = 0;
    std::uint64_t inflated_pages_ = 0, deflated_pages_ = 0;
    std::array<Role, 5> roles_{Role::Unused, Role::Unused, Role::Unused, Role::Unused, Role::Unused};
    boost::asio::steady_timer timer_; // used on the event loop only
    std::vector<PageRange> ranges_;
    HintChain hint_chain_;
    BalloonMetrics metrics_;
};

} // namespace ember::virtio::balloon
