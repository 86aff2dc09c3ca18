#include "devices/virtio/block/device.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace ember::virtio::block {
namespace {

// The drive's engine. When io_uring cannot be set up (an old kernel, or a container seccomp
// profile refusing io_uring_setup with EPERM or ENOSYS), an Async drive runs on the Sync engine
// with a warning instead of failing the boot, and `cfg.io_engine` records what runs.
std::unique_ptr<Backend> make_engine(DriveConfig& cfg, int fd) {
    if (cfg.cow) {
        cfg.io_engine = IoEngine::Sync;
        return make_cow_backend(cfg.cow, BlockDevice::QUEUE_SIZE);
    }
    if (cfg.io_engine == IoEngine::Async) {
        try {
            return make_backend(IoEngine::Async, fd, BlockDevice::QUEUE_SIZE, BlockDevice::SEG_MAX);
        } catch (const SystemError& e) {
            LOG_WARN("drive %s: io_uring is unavailable (%s); using the Sync I/O engine", cfg.drive_id.c_str(), e.what());
            cfg.io_engine = IoEngine::Sync;
        }
    }
    return make_backend(cfg.io_engine, fd, BlockDevice::QUEUE_SIZE, BlockDevice::SEG_MAX);
}

} // namespace

BlockDevice::BlockDevice(const GuestMemory& mem, boost::asio::io_context& io, DriveConfig cfg, UniqueFd file, std::uint64_t size)
    : VirtioDevice(mem, {QUEUE_SIZE}), cfg_(std::move(cfg)), file_(std::move(file)), size_(size),
      backend_(make_engine(cfg_, file_.get())), slots_(QUEUE_SIZE),
      limiter_(io, cfg_.rate_limiter, [this] { on_limiter_expiry(); }) {
    free_.reserve(QUEUE_SIZE);
    for (std::uint16_t i = QUEUE_SIZE; i > 0; --i) free_.push_back(static_cast<std::uint16_t>(i - 1));
    iov_.reserve(SEG_MAX);
    done_.reserve(QUEUE_SIZE);
    if (backend_->completion_fd() >= 0) {
        int fd = ::dup(backend_->completion_fd());
        if (fd < 0) throw SystemError("virtio-blk: dup of the completion eventfd", errno);
        completion_watch_ = std::make_unique<boost::asio::posix::stream_descriptor>(io, fd);
        watch_completions();
    }
}

BlockDevice::~BlockDevice() {
    if (completion_watch_) {
        boost::system::error_code ec;
        completion_watch_->close(ec);
    }
}

void BlockDevice::watch_completions() {
    completion_watch_->async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
        if (ec) return; // closed: the device is gone
        {
            std::lock_guard lk(mutex());
            const bool freed = complete_finished() > 0;
            if (freed) signal_used(queues()[0]);
            // Chains left waiting for a free slot are started now.
            if (freed && running() && queues()[0].active() && !limiter_.blocked()) pump();
        }
        watch_completions();
    });
}

std::uint32_t BlockDevice::device_type() const noexcept { return device_id::BLOCK; }

std::uint64_t BlockDevice::device_features() const noexcept {
    std::uint64_t f = bit(F_SEG_MAX) | bit(F_BLK_SIZE);
    if (cfg_.is_read_only) f |= bit(F_RO);
    if (cfg_.cache_type == DriveCacheType::Writeback) f |= bit(F_FLUSH);
    return f;
}

DiskGeometry BlockDevice::geometry() const noexcept { return {size_ / SECTOR_SIZE, cfg_.is_read_only, SEG_MAX}; }

void BlockDevice::read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept {
    // struct virtio_blk_config (§5.2.4) up to blk_size: capacity, size_max, seg_max, geometry, blk_size.
    std::uint8_t cfg[24] = {};
    const std::uint64_t capacity = size_ / SECTOR_SIZE;
    const std::uint32_t seg_max = SEG_MAX, blk_size = SECTOR_SIZE;
    std::memcpy(cfg, &capacity, 8);
    std::memcpy(cfg + 12, &seg_max, 4);
    std::memcpy(cfg + 20, &blk_size, 4);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = offset + i < sizeof cfg ? cfg[offset + i] : 0;
}

bool BlockDevice::activate() noexcept { return true; }

void BlockDevice::reset_device() noexcept {
    // §2.4: after reset the device must not touch the old rings or buffers, so in-flight I/O is
    // waited for here (a rare path; it blocks this vCPU only as long as the disk takes).
    done_.clear();
    backend_->drain(done_);
    done_.clear();
    free_.clear();
    for (std::uint16_t i = QUEUE_SIZE; i > 0; --i) free_.push_back(static_cast<std::uint16_t>(i - 1));
}

void BlockDevice::process_queue(std::size_t) noexcept {
    bump(metrics_.queue_event_count);
    // As Firecracker's process_queue_event: a blocked limiter leaves the queue to its timer.
    if (limiter_.blocked()) {
        bump(metrics_.rate_limiter_throttled_events);
        return;
    }
    pump();
}

void BlockDevice::on_limiter_expiry() noexcept {
    std::lock_guard lk(mutex());
    limiter_.unblock();
    bump(metrics_.rate_limiter_event_count);
    if (running() && queues()[0].active()) pump();
}

std::optional<RateLimiterConfig> BlockDevice::update_rate_limiter(const RateLimiterUpdate& u) noexcept {
    std::lock_guard lk(mutex());
    limiter_.update(u);
    cfg_.rate_limiter = limiter_.config();
    if (running() && queues()[0].active()) pump(); // requests held back by the old limits
    return cfg_.rate_limiter;
}

void BlockDevice::pump() noexcept {
    Queue& q = queues()[0];
    bool used = false;
    bool throttled = false;
    for (;;) {
        bool popped = false;
        while (!free_.empty()) {
            // Notifications are enabled again below, once nothing is left to start.
            const Queue::PopResult r = pop_chain(q, metrics_.event_fails, false);
            if (r.status == Queue::PopStatus::Empty) break;
            if (r.status == Queue::PopStatus::Broken) return;
            popped = true;
            if (r.status == Queue::PopStatus::BadChain) {
                bump(metrics_.invalid_reqs_count);
                LOG_DEBUG("virtio %s: %s", name().c_str(), r.error);
                q.add_used(r.head, 0);
                used = true;
                continue;
            }
            const Started st = start(r.head, r.descs);
            if (st == Started::Throttled) {
                // Back to the available ring, untouched; the limiter's timer resumes the queue.
                q.undo_pop(1);
                bump(metrics_.rate_limiter_throttled_events);
                throttled = true;
                break;
            }
            used |= st == Started::Done;
        }
        backend_->kick();
        if (complete_finished() > 0) used = true;
        if (throttled || limiter_.blocked()) break; // resumed by on_limiter_expiry()
        if (free_.empty()) {
            bump(metrics_.no_avail_buffer);
            break; // resumed by the completion handler
        }
        if (popped) continue;
        if (!q.enable_notification()) break;
    }
    if (used) signal_used(q);
}

BlockDevice::Started BlockDevice::start(std::uint16_t head, std::span<const Descriptor> chain) noexcept {
    Queue& q = queues()[0];
    const ParseResult p = parse_request(chain, geometry());
    if (p.error != RequestError::None) {
        bump(metrics_.invalid_reqs_count);
        LOG_DEBUG("virtio %s: request refused: %s", name().c_str(), to_string(p.error));
        if (p.status) (void)mem_.write_obj(*p.status, std::byte{p.status_value()});
        q.add_used(head, p.status ? 1 : 0);
        return Started::Done;
    }
    const Request& req = p.request;
    // Firecracker's rate_limit_request: one op for every request, bytes for reads and writes.
    const bool transfer = req.type == RequestType::In || req.type == RequestType::Out;
    if (!limiter_.admit(transfer ? req.data_len : 0)) return Started::Throttled;
    switch (req.type) {
    case RequestType::GetId: {
        // §5.2.6: up to 20 bytes, zero-padded; the drive id serves as the serial number.
        std::uint32_t written = 0;
        for (const auto& d : req.data) {
            for (std::uint32_t i = 0; i < d.len && written < ID_BYTES; ++i, ++written)
                d.host[i] = std::byte{static_cast<unsigned char>(written < cfg_.drive_id.size() ? cfg_.drive_id[written] : '\0')};
        }
        (void)mem_.write_obj(*p.status, std::byte{S_OK});
        q.add_used(head, written + 1);
        return Started::Done;
    }
    case RequestType::Flush:
        bump(metrics_.flush_count);
        if (cfg_.cache_type == DriveCacheType::Unsafe) { // nothing promised: as Firecracker, a no-op
            (void)mem_.write_obj(*p.status, std::byte{S_OK});
            q.add_used(head, 1);
            return Started::Done;
        }
        break;
    case RequestType::In:
    case RequestType::Out: break;
    }
    const std::uint16_t tag = free_.back();
    free_.pop_back();
    slots_[tag] = Slot{head, req.type, req.data_len, *p.status};
    iov_.clear();
    for (const auto& d : req.data) iov_.push_back(iovec{d.host, d.len});
    const Op op = req.type == RequestType::In ? Op::Read : req.type == RequestType::Out ? Op::Write : Op::Flush;
    backend_->submit(tag, op, req.sector * SECTOR_SIZE, iov_);
    return Started::Submitted;
}

std::size_t BlockDevice::complete_finished() noexcept {
    done_.clear();
    backend_->reap(done_);
    for (const auto& c : done_) complete(c);
    return done_.size();
}

void BlockDevice::complete(const Completion& c) noexcept {
    Slot& s = slots_[c.tag];
    const bool ok = c.result >= 0;
    if (!ok) {
        bump(metrics_.execute_fails);
        LOG_WARN("virtio %s: I/O error: %s", name().c_str(), std::strerror(static_cast<int>(-c.result)));
    }
    std::uint32_t used_len = 1;
    if (ok && s.type == RequestType::In) {
        bump(metrics_.read_count);
        bump(metrics_.read_bytes, s.data_len);
        used_len += static_cast<std::uint32_t>(std::min<std::uint64_t>(s.data_len, UINT32_MAX - 1));
    } else if (ok && s.type == RequestType::Out) {
        bump(metrics_.write_count);
        bump(metrics_.write_bytes, s.data_len);
    }
    (void)mem_.write_obj(s.status, std::byte{ok ? S_OK : S_IOERR});
    queues()[0].add_used(s.head, used_len);
    free_.push_back(c.tag);
}

void BlockDevice::quiesce_locked() noexcept {
    done_.clear();
    backend_->drain(done_);
    for (const auto& c : done_) complete(c);
    if (!done_.empty()) signal_used(queues()[0]);
    done_.clear();
}

void BlockDevice::quiesce() noexcept {
    std::lock_guard lk(mutex());
    quiesce_locked();
}

BlockState BlockDevice::save() {
    std::lock_guard lk(mutex());
    quiesce_locked();
    return BlockState{save_virtio(), size_};
}

std::shared_ptr<BlockDevice> BlockDevice::restore(const GuestMemory& mem, boost::asio::io_context& io, DriveConfig cfg, UniqueFd file,
                                                  std::uint64_t size, const BlockState& s) {
    auto dev = std::make_shared<BlockDevice>(mem, io, std::move(cfg), std::move(file), size);
    std::lock_guard lk(dev->mutex());
    if (s.disk_bytes != size)
        throw ConfigError("virtio " + dev->name() + " state: the image has " + std::to_string(size) + " bytes, the saved drive had " +
                          std::to_string(s.disk_bytes));
    dev->restore_virtio(s.virtio);
    dev->resume_after_restore();
    return dev;
}

void BlockDevice::replace_file(UniqueFd file, std::uint64_t size, std::string path) noexcept {
    std::lock_guard lk(mutex());
    if (cfg_.cow) { // refused by the callers (api/controller.cpp); the drive keeps its disk
        bump(metrics_.update_fails);
        LOG_ERROR("virtio %s: a copy-on-write drive cannot take another image (%s)", name().c_str(), path.c_str());
        return;
    }
    quiesce_locked();
    backend_->set_fd(file.get());
    file_ = std::move(file);
    size_ = size;
    cfg_.path_on_host = std::move(path);
    bump(metrics_.update_count);
    if (state().status & status::DRIVER_OK) config_changed();
}

} // namespace ember::virtio::block
