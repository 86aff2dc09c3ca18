#include "devices/virtio/block/backend.hpp"

#include "devices/virtio/block/cow.hpp"
#include "vmm/base/error.hpp"

#include <cerrno>
#include <unistd.h>

namespace ember::virtio::block {
namespace {

// Drops `n` transferred bytes from the front of an iovec list (a short read or write).
void advance(std::vector<iovec>& iov, std::size_t& first, std::uint64_t n) noexcept {
    while (n > 0 && first < iov.size()) {
        if (n >= iov[first].iov_len) {
            n -= iov[first].iov_len;
            ++first;
        } else {
            iov[first].iov_base = static_cast<std::byte*>(iov[first].iov_base) + n;
            iov[first].iov_len -= n;
            n = 0;
        }
    }
}

std::uint64_t total_len(std::span<const iovec> iov) noexcept {
    std::uint64_t t = 0;
    for (const auto& v : iov) t += v.iov_len;
    return t;
}

// One operation's progress, kept across resubmissions of short transfers.
struct Slot {
    Op op = Op::Read;
    std::uint64_t offset = 0;
    std::vector<iovec> iov;
    std::size_t first = 0;
    std::uint64_t total = 0;
    std::uint64_t done = 0;
    bool busy = false;
};

class SyncBackend final : public Backend {
public:
    SyncBackend(int fd, std::uint16_t slots, std::uint32_t max_segments) : fd_(fd) {
        iov_.reserve(max_segments);
        done_.reserve(slots);
    }
    void submit(std::uint16_t tag, Op op, std::uint64_t offset, std::span<const iovec> iov) noexcept override {
        done_.push_back({tag, run(op, offset, iov)});
    }
    void reap(std::vector<Completion>& out) noexcept override {
        out.insert(out.end(), done_.begin(), done_.end());
        done_.clear();
    }
    void drain(std::vector<Completion>& out) noexcept override { reap(out); }
    std::size_t in_flight() const noexcept override { return done_.size(); }
    void set_fd(int fd) noexcept override { fd_ = fd; }

private:
    std::int64_t run(Op op, std::uint64_t offset, std::span<const iovec> src) noexcept {
        if (op == Op::Flush) return ::fdatasync(fd_) == 0 ? 0 : -errno;
        iov_.assign(src.begin(), src.end());
        std::size_t first = 0;
        const std::uint64_t total = total_len(src);
        std::uint64_t done = 0;
        while (done < total) {
            const int cnt = static_cast<int>(iov_.size() - first);
            const auto off = static_cast<off_t>(offset + done);
            const ssize_t n = op == Op::Read ? ::preadv(fd_, iov_.data() + first, cnt, off) : ::pwritev(fd_, iov_.data() + first, cnt, off);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n < 0) return -errno;
            if (n == 0) return -EIO; // end of file inside the disk: the image shrank under us
            done += static_cast<std::uint64_t>(n);
            advance(iov_, first, static_cast<std::uint64_t>(n));
        }
        return static_cast<std::int64_t>(total);
    }
    int fd_;
    std::vector<iovec> iov_;
    std::vector<Completion> done_;
};

class UringBackend final : public Backend {
public:
    UringBackend(int fd, std::uint16_t slots, std::uint32_t max_segments) : fd_(fd), ring_(slots, "virtio-blk io_uring"), slots_(slots) {
        for (auto& s : slots_) s.iov.reserve(max_segments);
        const int rc = io_uring_register_eventfd(ring_.get(), efd_.fd());
        if (rc < 0) throw SystemError("virtio-blk io_uring: io_uring_register_eventfd", -rc);
    }
    ~UringBackend() override {
        std::vector<Completion> ignored;
        drain(ignored);
    }

    void submit(std::uint16_t tag, Op op, std::uint64_t offset, std::span<const iovec> iov) noexcept override {
        Slot& s = slots_[tag];
        s.op = op;
        s.offset = offset;
        s.iov.assign(iov.begin(), iov.end());
        s.first = 0;
        s.total = total_len(iov);
        s.done = 0;
        s.busy = true;
        ++busy_;
        queue(tag);
    }
    void kick() noexcept override {
        if (unsubmitted_) {
            (void)io_uring_submit(ring_.get());
            unsubmitted_ = false;
        }
    }
    void reap(std::vector<Completion>& out) noexcept override { collect(out, false); }
    void drain(std::vector<Completion>& out) noexcept override {
        while (busy_ > 0) collect(out, true);
    }
    int completion_fd() const noexcept override { return efd_.fd(); }
    std::size_t in_flight() const noexcept override { return busy_; }
    void set_fd(int fd) noexcept override { fd_ = fd; }

private:
    void queue(std::uint16_t tag) noexcept {
        Slot& s = slots_[tag];
        io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
        if (!sqe) {
            (void)io_uring_submit(ring_.get());
            sqe = io_uring_get_sqe(ring_.get());
        }
        if (!sqe) { // cannot happen with ≤ slots in flight; fail the operation rather than stall
            finish(tag, -EBUSY, failed_);
            return;
        }
        switch (s.op) {
        case Op::Flush:
            io_uring_prep_fsync(sqe, fd_, IORING_FSYNC_DATASYNC);
            // IO_DRAIN: starts only after every earlier submission completed, so the flush
            // covers every write the driver saw completing before it issued the flush.
            sqe->flags |= IOSQE_IO_DRAIN;
            break;
        case Op::Read:
        case Op::Write: {
            const auto n = static_cast<unsigned>(s.iov.size() - s.first);
            const std::uint64_t off = s.offset + s.done;
            if (s.op == Op::Read) io_uring_prep_readv(sqe, fd_, s.iov.data() + s.first, n, off);
            else io_uring_prep_writev(sqe, fd_, s.iov.data() + s.first, n, off);
            break;
        }
        }
        io_uring_sqe_set_data64(sqe, tag);
        unsubmitted_ = true;
    }

    void finish(std::uint16_t tag, std::int64_t result, std::vector<Completion>& out) noexcept {
        slots_[tag].busy = false;
        --busy_;
        out.push_back({tag, result});
    }

    void collect(std::vector<Completion>& out, bool wait) noexcept {
        (void)efd_.drain();
        out.insert(out.end(), failed_.begin(), failed_.end());
        failed_.clear();
        kick();
        io_uring_cqe* cqe = nullptr;
        if (wait && busy_ > 0) {
            const int rc = io_uring_wait_cqe(ring_.get(), &cqe);
            if (rc < 0 && rc != -EINTR) {
                // The ring itself failed: nothing more will complete, so give up on every slot.
                for (std::size_t t = 0; t < slots_.size(); ++t)
                    if (slots_[t].busy) finish(static_cast<std::uint16_t>(t), rc, out);
                return;
            }
        }
        unsigned seen = 0;
        unsigned head;
        io_uring_for_each_cqe(ring_.get(), head, cqe) {
            ++seen;
            const auto tag = static_cast<std::uint16_t>(io_uring_cqe_get_data64(cqe));
            const int res = cqe->res;
            if (tag >= slots_.size() || !slots_[tag].busy) continue;
            Slot& s = slots_[tag];
            if (res == -EINTR || res == -EAGAIN) {
                queue(tag);
            } else if (res < 0) {
                finish(tag, res, out);
            } else if (s.op == Op::Flush) {
                finish(tag, 0, out);
            } else if (res == 0) {
                finish(tag, -EIO, out); // no progress: end of file inside the disk
            } else {
                s.done += static_cast<std::uint64_t>(res);
                advance(s.iov, s.first, static_cast<std::uint64_t>(res));
                if (s.done < s.total) queue(tag); // short transfer: resubmit the rest
                else finish(tag, static_cast<std::int64_t>(s.total), out);
            }
        }
        io_uring_cq_advance(ring_.get(), seen);
        out.insert(out.end(), failed_.begin(), failed_.end());
        failed_.clear();
        kick();
    }

    int fd_;
    Ring ring_;
    EventFd efd_;
    std::vector<Slot> slots_;
    std::vector<Completion> failed_;
    std::size_t busy_ = 0;
    bool unsubmitted_ = false;
};

class CowBackend final : public Backend {
public:
    CowBackend(std::shared_ptr<CowDisk> disk, std::uint16_t slots) : disk_(std::move(disk)) { done_.reserve(slots); }
    void submit(std::uint16_t tag, Op op, std::uint64_t offset, std::span<const iovec> iov) noexcept override {
        std::int64_t rc = 0;
        switch (op) {
        case Op::Read: rc = disk_->read(offset, iov); break;
        case Op::Write: rc = disk_->write(offset, iov); break;
        case Op::Flush: rc = disk_->flush(); break;
        }
        done_.push_back({tag, rc});
    }
    void reap(std::vector<Completion>& out) noexcept override {
        out.insert(out.end(), done_.begin(), done_.end());
        done_.clear();
    }
    void drain(std::vector<Completion>& out) noexcept override { reap(out); }
    std::size_t in_flight() const noexcept override { return done_.size(); }
    void set_fd(int) noexcept override {}

private:
    std::shared_ptr<CowDisk> disk_;
    std::vector<Completion> done_;
};

} // namespace

std::unique_ptr<Backend> make_cow_backend(std::shared_ptr<CowDisk> disk, std::uint16_t slots) {
    return std::make_unique<CowBackend>(std::move(disk), slots);
}

std::unique_ptr<Backend> make_backend(IoEngine engine, int fd, std::uint16_t slots, std::uint32_t max_segments) {
    if (engine == IoEngine::Sync) return std::make_unique<SyncBackend>(fd, slots, max_segments);
    return std::make_unique<UringBackend>(fd, slots, max_segments);
}

} // namespace ember::virtio::block
