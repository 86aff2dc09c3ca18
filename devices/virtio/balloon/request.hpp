#pragma once
// virtio-balloon (virtio 1.2 §5.5) request parsing as pure functions: the PFN arrays of the
// inflate and deflate queues (§5.5.6: little-endian 32-bit page frame numbers of 4 KiB pages,
// in device-readable buffers), the statistics buffer (§5.5.6.3: packed entries of a 16-bit tag
// and a 64-bit value) and the page ranges of the free-page hinting and reporting queues
// (device-writable buffers, §5.5.6.4 / §5.5.6.6). Unit-tested and fuzzed without a guest.
//
// Every chain is bounded: at most MAX_PFNS_PER_CHAIN PFNs (Linux sends at most
// VIRTIO_BALLOON_ARRAY_PFNS_MAX = 256 per request, Firecracker's MAX_PAGES_IN_DESC), at most
// MAX_STAT_ENTRIES statistics, and a chain with anything outside guest RAM is refused whole, so
// one request is applied entirely or not at all.

#include "devices/virtio/queue.hpp"
#include "vmm/base/guest_addr.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace ember {
class GuestMemory;
}

namespace ember::virtio::balloon {

inline constexpr unsigned PFN_SHIFT = 12; // VIRTIO_BALLOON_PFN_SHIFT: PFNs count 4 KiB pages
inline constexpr std::uint64_t PAGE_BYTES = std::uint64_t{1} << PFN_SHIFT;
inline constexpr std::size_t MAX_PFNS_PER_CHAIN = 256;
inline constexpr std::size_t STAT_ENTRY_BYTES = 10; // struct virtio_balloon_stat, packed
inline constexpr std::size_t MAX_STAT_ENTRIES = 64;
// Hinting and reporting chains: at most this many ranges each (Linux reports at most
// PAGE_REPORTING_CAPACITY = 32 ranges per request and hints one block per buffer).
inline constexpr std::size_t MAX_RANGES_PER_CHAIN = 64;

// free_page_hint_cmd_id values with a fixed meaning (Linux's VIRTIO_BALLOON_CMD_ID_*); a run's
// id is anything from CMD_ID_FIRST on.
inline constexpr std::uint32_t CMD_ID_STOP = 0;
inline constexpr std::uint32_t CMD_ID_DONE = 1;
inline constexpr std::uint32_t CMD_ID_FIRST = 2;

inline constexpr std::uint32_t PAGES_PER_MIB = 256; // Firecracker's MIB_TO_4K_PAGES

// §5.5.6.3 statistics tags (VIRTIO_BALLOON_S_*), as Firecracker names them in BalloonStats.
namespace stat_tag {
inline constexpr std::uint16_t SWAP_IN = 0, SWAP_OUT = 1, MAJFLT = 2, MINFLT = 3, MEMFREE = 4, MEMTOT = 5, AVAIL = 6,
                               CACHES = 7, HTLB_PGALLOC = 8, HTLB_PGFAIL = 9, OOM_KILL = 10, ALLOC_STALL = 11,
                               ASYNC_SCAN = 12, DIRECT_SCAN = 13, ASYNC_RECLAIM = 14, DIRECT_RECLAIM = 15;
inline constexpr std::size_t COUNT = 16;
} // namespace stat_tag

// The API name of each tag (BalloonStats in firecracker-api v1.16.1), indexed by tag.
inline const char* stat_name(std::uint16_t tag) noexcept {
    static constexpr const char* names[stat_tag::COUNT] = {
            "swap_in",          "swap_out",    "major_faults",        "minor_faults",     "free_memory", "total_memory",
            "available_memory", "disk_caches", "hugetlb_allocations", "hugetlb_failures", "oom_kill",    "alloc_stall",
            "async_scan",       "direct_scan", "async_reclaim",       "direct_reclaim"};
    return tag < stat_tag::COUNT ? names[tag] : "?";
}

// The latest value the driver reported for each known tag; nullopt until it reported one.
struct GuestStats {
    std::array<std::optional<std::uint64_t>, stat_tag::COUNT> values{};
    bool operator==(const GuestStats&) const = default;
};

// What GET /balloon/statistics shows: the target and the driver's actual size, and the guest's
// latest statistics.
struct BalloonStatsView {
    std::uint32_t target_pages = 0, actual_pages = 0;
    GuestStats guest;
};

// GET /balloon/hinting/status: the host's last command and the last id the guest sent.
struct HintingStatus {
    std::uint32_t host_cmd = CMD_ID_STOP;
    std::optional<std::uint32_t> guest_cmd;
    bool operator==(const HintingStatus&) const = default;
};

enum class RequestError {
    None,
    DeviceWritable, // inflate/deflate/stats buffers are device-readable only
    DeviceReadable, // hinting/reporting page buffers are device-writable only
    BadLength,      // not a whole number of PFNs / stat entries, or a misaligned range
    TooLong,        // more PFNs, entries or ranges than the bounds above
    OutsideRam,     // a page not in guest RAM
};
const char* to_string(RequestError e) noexcept;

// A run of whole guest pages.
struct PageRange {
    GuestAddr start;
    std::uint64_t pages = 0;
    bool operator==(const PageRange&) const = default;
};

// Reads the PFNs of an inflate or deflate chain (every buffer device-readable, each a whole
// number of 4-byte PFNs, at most MAX_PFNS_PER_CHAIN in all, every page inside RAM of `mem`) and
// returns them as sorted, merged ranges, each inside one RAM region, duplicates counted once.
// On error `out` is empty.
RequestError parse_pfns(std::span<const Descriptor> chain, const GuestMemory& mem, std::vector<PageRange>& out);

// Reads a stats chain (device-readable, a whole number of entries, at most MAX_STAT_ENTRIES) into
// `stats`. Entries with unknown tags are skipped (§5.5.6.3.1: the device ignores tags it does not
// recognize). On error `stats` is unchanged.
RequestError parse_stats(std::span<const Descriptor> chain, GuestStats& stats) noexcept;

// A free-page hinting chain (§5.5.6.4, Linux's virtio_balloon): either one device-readable
// 4-byte command id (the driver starting a run with the host's id, or VIRTIO_BALLOON_CMD_ID_STOP),
// or device-writable buffers of free pages.
struct HintChain {
    std::optional<std::uint32_t> cmd_id;
    std::vector<PageRange> ranges;
};
RequestError parse_hint(std::span<const Descriptor> chain, const GuestMemory& mem, HintChain& out);

// A free-page reporting chain (§5.5.6.6): device-writable, page-aligned buffers in RAM, at most
// MAX_RANGES_PER_CHAIN. On error `out` is empty.
RequestError parse_report(std::span<const Descriptor> chain, const GuestMemory& mem, std::vector<PageRange>& out);

} // namespace ember::virtio::balloon
