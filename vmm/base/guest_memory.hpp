#pragma once
// Guest RAM. The only way to reach guest bytes is a range-checked slice: slice(addr, len) to read,
// writable(addr, len) to write. Both check that the whole range lies inside one RAM region:
// wrap-around, region crossings and the MMIO gap are rejected.
//
// Dirty tracking: every region has a bitmap of its 4 KiB pages. Once enable_dirty_tracking() is
// called, writable(), write() and mark_dirty() set the bits of the pages they touch, so a diff
// snapshot can join what devices wrote with KVM's dirty log for what vCPUs wrote. Devices write
// guest memory only through these calls. Bits are atomics: devices mark pages from the event
// loop and vCPU threads at once.

#include "vmm/base/guest_addr.hpp"
#include "vmm/base/unique_fd.hpp"

#include <atomic>
#include <cstddef>
#include <memory>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace ember {

struct MemoryRegion {
    GuestRange range;
    std::byte* host = nullptr; // host address of range.start()
    std::uint64_t offset = 0;  // offset of this region inside the backing mapping
};

class GuestMemory {
public:
    // RAM made of explicit (start, size) regions (the architecture lays them out: see
    // vmm/arch/x86_64/layout.hpp). Regions must be non-empty, sorted, page-aligned and
    // non-overlapping. Backed by one anonymous MAP_NORESERVE mapping aligned to 2 MiB so the host
    // can back it with huge pages and KVM can use 2 MiB nested mappings.
    static GuestMemory with_regions(const std::vector<std::pair<GuestAddr, std::uint64_t>>& regions);
    // As with_regions(), with the bytes of `fd` (a memory file: region i at its offset in the
    // backing, the sum of the sizes before it) mapped MAP_PRIVATE over the aligned reservation:
    // pages are read in when first touched, and guest writes stay private to this process, so
    // many VMs can share one file through the page cache. Throws ConfigError naming `path` when
    // the file is shorter than the regions.
    static GuestMemory with_regions_from_file(const std::vector<std::pair<GuestAddr, std::uint64_t>>& regions, int fd,
                                              const std::string& path);

    GuestMemory(GuestMemory&&) noexcept = default;
    GuestMemory& operator=(GuestMemory&&) noexcept = default;

    const std::vector<MemoryRegion>& regions() const noexcept { return regions_; }
    std::uint64_t total_size() const noexcept { return mapping_.size(); }
    // Host-side base and length of the backing mapping (for smaps accounting and snapshots).
    const Mapping& backing() const noexcept { return mapping_; }

    // The host bytes of [addr, addr + len) if all of it is RAM in a single region.
    std::optional<std::span<std::byte>> slice(GuestAddr addr, std::uint64_t len) const noexcept;
    // As slice(), for set-up paths: throws ConfigError naming `what` when out of RAM.
    std::span<std::byte> slice_or_throw(GuestAddr addr, std::uint64_t len, const std::string& what) const;

    // As slice(), for bytes the caller is about to write: marks their pages dirty while tracking.
    std::optional<std::span<std::byte>> writable(GuestAddr addr, std::uint64_t len) const noexcept;

    // Gives the host pages of [addr, addr + len) back to the host (madvise MADV_DONTNEED on the
    // anonymous private mapping: the next guest access reads zeros and faults in a fresh page).
    // The range must be page-aligned and lie in one RAM region. Marks the pages dirty while
    // tracking (their content changed). Returns 0, EINVAL for a range that is not, or madvise's
    // errno.
    int discard(GuestAddr addr, std::uint64_t len) const noexcept;

    bool read(GuestAddr addr, std::span<std::byte> out) const noexcept;
    bool write(GuestAddr addr, std::span<const std::byte> in) const noexcept;

    template <class T>
    bool read_obj(GuestAddr addr, T& out) const noexcept {
        static_assert(std::is_trivially_copyable_v<T>);
        return read(addr, std::as_writable_bytes(std::span(&out, 1)));
    }
    template <class T>
    bool write_obj(GuestAddr addr, const T& in) const noexcept {
        static_assert(std::is_trivially_copyable_v<T>);
        return write(addr, std::as_bytes(std::span(&in, 1)));
    }

    // End of the RAM region that starts at 0 (below the MMIO gap).
    GuestAddr low_ram_end() const noexcept;

    static constexpr std::uint64_t PAGE_SIZE = 4096;
    // Starts (with every bit clear) or stops marking written pages.
    void enable_dirty_tracking() noexcept;
    void disable_dirty_tracking() noexcept;
    bool dirty_tracking() const noexcept { return tracking_->enabled.load(std::memory_order_acquire); }
    // Marks the pages of [addr, addr + len) that lie in RAM (a write that bypassed writable(),
    // such as I/O the kernel performed into guest buffers). No-op while tracking is off.
    void mark_dirty(GuestAddr addr, std::uint64_t len) const noexcept;
    // The dirty bitmap of region `index` (bit i of word i / 64: page i of the region), cleared as
    // it is taken. Empty for an index past the last region.
    std::vector<std::uint64_t> take_dirty_bitmap(std::size_t index) noexcept;
    // ORs `bits` (laid out as take_dirty_bitmap()'s) back into region `index`'s bitmap: a diff
    // snapshot whose write failed gives back the pages it took, so the next one still holds them
    // (Firecracker memory.rs dump_dirty: store_dirty_bitmap on error). Words past the region's
    // are ignored.
    void restore_dirty_bitmap(std::size_t index, std::span<const std::uint64_t> bits) noexcept;
    // The pages of region `index` the host holds in memory (mincore(2), one bit per page as
    // take_dirty_bitmap()): for a diff snapshot without dirty tracking, as Firecracker 1.16's
    // mincore_bitmap. Over-approximates what changed (every page ever touched, read or written,
    // counts) and misses pages swapped out. Throws SystemError when mincore fails.
    std::vector<std::uint64_t> resident_bitmap(std::size_t index) const;

private:
    struct Tracking {
        std::atomic<bool> enabled{false};
        // One bitmap per region, words of 64 pages, allocated with the memory (1 bit per page).
        std::vector<std::unique_ptr<std::atomic<std::uint64_t>[]>> bitmaps;
        std::vector<std::size_t> words;
    };
    GuestMemory(Mapping m, std::vector<MemoryRegion> r);
    static Mapping map_aligned(std::uint64_t bytes);
    // Checked regions of a layout, with their offsets in the backing; the total size.
    static std::pair<std::vector<MemoryRegion>, std::uint64_t> plan(const std::vector<std::pair<GuestAddr, std::uint64_t>>& layout);
    void mark_region(std::size_t index, std::uint64_t off, std::uint64_t len) const noexcept;
    // The region holding all of [addr, addr + len), and addr's offset in it.
    std::optional<std::pair<std::size_t, std::uint64_t>> locate(GuestAddr addr, std::uint64_t len) const noexcept;
    Mapping mapping_;
    std::vector<MemoryRegion> regions_;
    std::unique_ptr<Tracking> tracking_;
};

} // namespace ember
