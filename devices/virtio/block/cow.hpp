#pragma once
// A copy-on-write disk: the guest reads and writes a disk whose base image is never modified
// (`ember run`'s --rootfs/--drive). Writes land in an overlay, an unlinked sparse file of the
// base's size in a scratch directory, one 4 KiB cluster at a time; a bitmap in memory says
// which clusters the overlay holds. Reads take each cluster from the overlay if its bit is set,
// else from the base. export_to() writes the disk as the guest sees it (--keep-disk).
//
// Invariant: a cluster's bit is set only once the overlay holds that whole cluster's current
// content (a partial write to an absent cluster first copies the cluster from the base:
// "copy-up"). So a failed write never exposes overlay bytes that were never written.

#include "vmm/base/unique_fd.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::block {

// The cluster bookkeeping of a CowDisk, without I/O (fuzzed and unit-tested on its own).
// Cluster c covers bytes [c * CLUSTER, min((c + 1) * CLUSTER, disk_bytes)): the last one is
// partial when the disk is not a multiple of CLUSTER.
class CowMap {
public:
    static constexpr std::uint64_t CLUSTER = 4096;

    struct Run {
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        bool present = false; // in the overlay
        bool operator==(const Run&) const = default;
    };
    // Clusters [first, end).
    struct ClusterRange {
        std::uint64_t first = 0;
        std::uint64_t end = 0;
        bool empty() const noexcept { return first >= end; }
        bool operator==(const ClusterRange&) const = default;
    };
    // The absent clusters a write must copy up first: those it covers only partly (at most
    // its first and its last).
    struct CopyUps {
        std::uint64_t cluster[2] = {0, 0};
        unsigned count = 0;
    };

    explicit CowMap(std::uint64_t disk_bytes);

    std::uint64_t disk_bytes() const noexcept { return bytes_; }
    std::uint64_t clusters() const noexcept { return clusters_; }
    std::uint64_t cluster_begin(std::uint64_t c) const noexcept { return c * CLUSTER; }
    std::uint64_t cluster_end(std::uint64_t c) const noexcept;
    // [offset, offset + len) lies inside the disk (without overflow); len 0 at offset
    // disk_bytes() does.
    bool contains(std::uint64_t offset, std::uint64_t len) const noexcept;

    bool present(std::uint64_t c) const noexcept;
    void set_present(ClusterRange r) noexcept;
    bool any_present(ClusterRange r) const noexcept;
    std::uint64_t present_count() const noexcept { return present_count_; }

    // For a range inside the disk with len > 0: the clusters it touches, and those it covers
    // whole (the last cluster counts as whole when the range reaches the end of the disk).
    ClusterRange touched(std::uint64_t offset, std::uint64_t len) const noexcept;
    ClusterRange covered(std::uint64_t offset, std::uint64_t len) const noexcept;
    CopyUps copy_ups(std::uint64_t offset, std::uint64_t len) const noexcept;
    // Splits a range inside the disk into maximal runs whose clusters are all present or all
    // absent, clipped to the range, in order (replaces `out`'s content; none for len 0).
    void runs(std::uint64_t offset, std::uint64_t len, std::vector<Run>& out) const;
    // The first of those runs for [offset, stop), offset < stop: what runs() lists, one at a
    // time and without allocating (the device's read path).
    Run run_at(std::uint64_t offset, std::uint64_t stop) const noexcept;

private:
    // The first cluster in [c, end) whose presence is not `value`; `end` if none.
    std::uint64_t next_change(std::uint64_t c, std::uint64_t end, bool value) const noexcept;

    std::uint64_t bytes_;
    std::uint64_t clusters_;
    std::uint64_t present_count_ = 0;
    std::vector<std::uint64_t> bits_;
};

class CowDisk {
public:
    static constexpr std::uint64_t CLUSTER = CowMap::CLUSTER;

    // Opens `base_path` (a regular file or block device) O_RDONLY and creates the overlay in
    // `scratch_dir` (O_TMPFILE; else mkstemp and unlink), sized as the base and empty. Throws
    // SystemError or ConfigError naming the path.
    static CowDisk create(const std::string& base_path, const std::string& scratch_dir);

    CowDisk(CowDisk&&) noexcept = default;
    CowDisk& operator=(CowDisk&&) noexcept = default;
    CowDisk(const CowDisk&) = delete;
    CowDisk& operator=(const CowDisk&) = delete;
    ~CowDisk() = default;

    std::uint64_t size() const noexcept { return map_.disk_bytes(); }
    const std::string& base_path() const noexcept { return base_path_; }
    // The base's identity (st_dev, st_ino), to tell whether another path names the same file.
    std::uint64_t base_dev() const noexcept { return dev_; }
    std::uint64_t base_ino() const noexcept { return ino_; }
    const CowMap& map() const noexcept { return map_; }

    // The guest-facing operations. They never throw. A range that does not lie wholly inside
    // the disk is refused with -EIO before anything is read or written (a real image file gives
    // a short read there, which the Sync engine reports as -EIO too; virtio-blk checks the
    // sector range before it gets here). read/write return the bytes transferred (all of them)
    // or -errno; after a failed write the range's content is unspecified, as on a real disk,
    // but clusters outside it are unchanged and the base is never written.
    std::int64_t read(std::uint64_t offset, std::span<const iovec> iov) noexcept;
    std::int64_t write(std::uint64_t offset, std::span<const iovec> iov) noexcept;
    // fdatasync of the overlay: 0 or -errno.
    std::int64_t flush() noexcept;
    // Makes [offset, offset + len) read as zeroes: whole clusters become present holes of the
    // overlay (fallocate PUNCH_HOLE, or zeroes written where the filesystem cannot punch);
    // the partial clusters at its edges are zeroed through write(). 0 or -errno.
    std::int64_t discard(std::uint64_t offset, std::uint64_t len) noexcept;

    // Writes the disk as read() sees it to `out_path` (replaced atomically: written beside it
    // and renamed at the end), sparse where whole clusters are zero. Throws SystemError naming
    // the file; `out_path` is then as it was.
    void export_to(const std::string& out_path);

private:
    CowDisk(UniqueFd base, UniqueFd overlay, std::uint64_t size, std::string base_path, std::uint64_t dev, std::uint64_t ino);
    std::int64_t copy_up(std::uint64_t cluster) noexcept;
    std::int64_t zero_range(std::uint64_t offset, std::uint64_t len) noexcept;

    UniqueFd base_, overlay_;
    CowMap map_;
    std::string base_path_;
    std::uint64_t dev_ = 0, ino_ = 0;
    // Scratch space of the operations, kept to spare allocations on the I/O path.
    std::vector<iovec> slice_;
    std::vector<std::byte> bounce_;
};

} // namespace ember::virtio::block
