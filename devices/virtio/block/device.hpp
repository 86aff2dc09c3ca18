#pragma once
// virtio-blk (virtio 1.2 §5.2) over a raw image file: IN, OUT, FLUSH and GET_ID on one queue,
// served on the event loop with the drive's I/O engine.

#include "devices/virtio/block/backend.hpp"
#include "devices/virtio/block/request.hpp"
#include "devices/virtio/device.hpp"
#include "devices/virtio/limiter.hpp"
#include "devices/virtio/block/config.hpp"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <memory>

namespace ember::virtio::block {

// §5.2.3 feature bits.
inline constexpr unsigned F_SEG_MAX = 2;
inline constexpr unsigned F_RO = 5;
inline constexpr unsigned F_BLK_SIZE = 6;
inline constexpr unsigned F_FLUSH = 9;

// Firecracker's block metric names (BlockDeviceMetrics).
struct BlockMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, cfg_fails{0}, event_fails{0}, execute_fails{0}, invalid_reqs_count{0},
        flush_count{0}, queue_event_count{0}, read_bytes{0}, write_bytes{0}, read_count{0}, write_count{0},
        update_count{0}, update_fails{0}, no_avail_buffer{0}, rate_limiter_event_count{0},
        rate_limiter_throttled_events{0};
    MetricValues values() const {
        return {
                {"activate_fails", value_of(activate_fails)},
                {"cfg_fails", value_of(cfg_fails)},
                {"event_fails", value_of(event_fails)},
                {"execute_fails", value_of(execute_fails)},
                {"invalid_reqs_count", value_of(invalid_reqs_count)},
                {"flush_count", value_of(flush_count)},
                {"queue_event_count", value_of(queue_event_count)},
                {"read_bytes", value_of(read_bytes)},
                {"write_bytes", value_of(write_bytes)},
                {"read_count", value_of(read_count)},
                {"write_count", value_of(write_count)},
                {"update_count", value_of(update_count)},
                {"update_fails", value_of(update_fails)},
                {"no_avail_buffer", value_of(no_avail_buffer)},
                {"rate_limiter_event_count", value_of(rate_limiter_event_count)},
                {"rate_limiter_throttled_events", value_of(rate_limiter_throttled_events)}};
    }
};

// A quiesced virtio-blk device (nothing in flight: see BlockDevice::save()). The drive's
// configuration and image are host resources handed to restore(); `disk_bytes` is the image
// size the driver was told, which the restored image must have.
struct BlockState {
    DeviceState virtio;
    std::uint64_t disk_bytes = 0;
    bool operator==(const BlockState&) const = default;
};

class BlockDevice final : public VirtioDevice {
public:
    static constexpr std::uint16_t QUEUE_SIZE = 256;
    static constexpr std::uint32_t SEG_MAX = QUEUE_SIZE - 2; // header and status take two

    // `file` is the opened image (O_RDONLY for read-only drives) of `size` bytes; the guest sees
    // size / 512 sectors. With cfg.cow, I/O goes to that copy-on-write disk instead (`file` is
    // its base, opened O_RDONLY, and is not used). An Async drive whose io_uring cannot be set up runs on the Sync engine
    // (config().io_engine says which runs). Throws SystemError if no engine can be set up.
    BlockDevice(const GuestMemory& mem, boost::asio::io_context& io, DriveConfig cfg, UniqueFd file, std::uint64_t size);
    ~BlockDevice() override;

    // Snapshot restore: the device on `file` (as the constructor takes it) in state `s`. Throws
    // ConfigError when the state does not fit this drive or guest memory (see
    // VirtioDevice::restore_virtio), or the image is not `s.disk_bytes` long.
    static std::shared_ptr<BlockDevice> restore(const GuestMemory& mem, boost::asio::io_context& io, DriveConfig cfg, UniqueFd file,
                                                std::uint64_t size, const BlockState& s);
    // Waits for every request in flight and returns it to the driver (used ring, interrupt).
    // Blocks the caller as long as the disk takes; for pausing, not for device paths.
    void quiesce() noexcept;
    // quiesce(), then the state. The VM must be paused, so that nothing new starts after it.
    BlockState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override;
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    bool activate() noexcept override;
    void reset_device() noexcept override;
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "block " + cfg_.drive_id; }

    // PATCH /drives/{id}: the same drive on another image (Firecracker's "update"). Waits for
    // in-flight I/O, swaps the file and raises a configuration change for the new capacity.
    // A copy-on-write drive (config().cow) keeps its disk: the caller refuses that request, and
    // this counts an update_fails.
    void replace_file(UniqueFd file, std::uint64_t size, std::string path) noexcept;

    // PATCH /drives/{id} rate_limiter (Firecracker's update semantics: RateLimiterUpdate).
    // Returns the limiter now in force.
    std::optional<RateLimiterConfig> update_rate_limiter(const RateLimiterUpdate& u) noexcept;

    const DriveConfig& config() const noexcept { return cfg_; }
    const BlockMetrics& metrics() const noexcept { return metrics_; }
    DiskGeometry geometry() const noexcept;

private:
    // A request in flight. Not saved: a saved device has none.
    struct Slot {
        std::uint16_t head = 0;
        RequestType type = RequestType::In;
        std::uint64_t data_len = 0;
        GuestAddr status; // the status byte (in RAM: resolved when the chain was popped)
    };
    void quiesce_locked() noexcept;
    void pump() noexcept;
    enum class Started { Done, Submitted, Throttled };
    // Starts one request: Done if it already completed (used ring written), Throttled if the
    // rate limiter refused it (nothing was done; the caller puts the chain back).
    Started start(std::uint16_t head, std::span<const Descriptor> chain) noexcept;
    void on_limiter_expiry() noexcept;
    std::size_t complete_finished() noexcept;
    void complete(const Completion& c) noexcept;
    void watch_completions();

    DriveConfig cfg_;
    UniqueFd file_;
    std::uint64_t size_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> completion_watch_;
    std::vector<Slot> slots_;
    std::vector<std::uint16_t> free_;
    std::vector<iovec> iov_;
    std::vector<Completion> done_;
    BlockMetrics metrics_;
    QueueLimiter limiter_; // last: its timer handler uses the members above
};

} // namespace ember::virtio::block
