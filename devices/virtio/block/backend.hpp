#pragma once
// Disk I/O for virtio-blk, behind one interface with two engines (Firecracker's `io_engine`):
//   Async: io_uring (one ring per device, completions signalled on an eventfd that the event
//          loop watches, at most `slots` operations in flight);
//   Sync:  preadv/pwritev/fdatasync on the event-loop thread, completed inside submit().
// Both resubmit short transfers until done, and complete a Flush only after every write
// submitted before it has completed.

#include "vmm/base/io_ring.hpp"
#include "vmm/base/unique_fd.hpp"
#include "devices/virtio/block/config.hpp"

#include <cstdint>
#include <memory>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::block {

using IoEngine = DriveIoEngine;
enum class Op { Read, Write, Flush };

struct Completion {
    std::uint16_t tag = 0;
    std::int64_t result = 0; // bytes transferred (0 for Flush), or -errno
};

class Backend {
public:
    virtual ~Backend() = default;
    // Starts `op` at byte `offset` of the file over `iov` (copied; the memory must stay valid
    // until the completion). `tag` < slots names a free slot. Never fails here: errors come back
    // as completions.
    virtual void submit(std::uint16_t tag, Op op, std::uint64_t offset, std::span<const iovec> iov) noexcept = 0;
    // Hands queued submissions to the kernel (once per batch).
    virtual void kick() noexcept {}
    // Appends finished operations to `out` without blocking.
    virtual void reap(std::vector<Completion>& out) noexcept = 0;
    // Waits until nothing is in flight, appending the completions (device reset).
    virtual void drain(std::vector<Completion>& out) noexcept = 0;
    // eventfd that becomes readable when completions are ready; -1 for the Sync engine.
    virtual int completion_fd() const noexcept { return -1; }
    virtual std::size_t in_flight() const noexcept = 0;
    // Points later operations at another file (only with nothing in flight; the caller owns it).
    virtual void set_fd(int fd) noexcept = 0;
};

// Throws SystemError if the engine cannot be set up (io_uring refused by the kernel).
std::unique_ptr<Backend> make_backend(IoEngine engine, int fd, std::uint16_t slots, std::uint32_t max_segments);

class CowDisk;
// A Sync engine over a copy-on-write disk (DriveConfig::cow): each operation runs inside
// submit() on CowDisk. set_fd() does not apply to it (PATCH is refused for such a drive).
std::unique_ptr<Backend> make_cow_backend(std::shared_ptr<CowDisk> disk, std::uint16_t slots);

} // namespace ember::virtio::block
