#include "devices/virtio/balloon/request.hpp"

#include "vmm/base/guest_memory.hpp"

#include <algorithm>
#include <cstring>

namespace ember::virtio::balloon {

const char* to_string(RequestError e) noexcept {
    switch (e) {
    case RequestError::None: return "none";
    case RequestError::DeviceWritable: return "device-writable buffer where the device only reads";
    case RequestError::DeviceReadable: return "device-readable buffer where the driver hands over pages";
    case RequestError::BadLength: return "buffer length is not a whole number of entries or pages";
    case RequestError::TooLong: return "request longer than the device's bound";
    case RequestError::OutsideRam: return "page outside guest RAM";
    }
    return "?";
}

namespace {

// Sorts and merges pages into runs, a run never crossing into another RAM region (each run is
// one GuestMemory::slice). Every page was checked to be in RAM.
void merge(std::vector<std::uint64_t>& pages, const GuestMemory& mem, std::vector<PageRange>& out) {
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    for (const std::uint64_t p : pages) {
        if (!out.empty()) {
            PageRange& last = out.back();
            const std::uint64_t end = last.start.raw() + last.pages * PAGE_BYTES;
            if (end == p && mem.slice(last.start, (last.pages + 1) * PAGE_BYTES)) {
                ++last.pages;
                continue;
            }
        }
        out.push_back(PageRange{GuestAddr(p), 1});
    }
}

// Whether [addr, addr + len) is whole pages inside one RAM region.
RequestError check_range(std::uint64_t addr, std::uint64_t len, const GuestMemory& mem) noexcept {
    if (len == 0 || addr % PAGE_BYTES != 0 || len % PAGE_BYTES != 0) return RequestError::BadLength;
    if (!mem.slice(GuestAddr(addr), len)) return RequestError::OutsideRam;
    return RequestError::None;
}

} // namespace

RequestError parse_pfns(std::span<const Descriptor> chain, const GuestMemory& mem, std::vector<PageRange>& out) {
    out.clear();
    std::size_t count = 0;
    for (const auto& d : chain) {
        if (d.device_writable) return RequestError::DeviceWritable;
        if (d.len % sizeof(std::uint32_t) != 0) return RequestError::BadLength;
        count += d.len / sizeof(std::uint32_t);
        if (count > MAX_PFNS_PER_CHAIN) return RequestError::TooLong;
    }
    std::vector<std::uint64_t> pages;
    pages.reserve(count);
    for (const auto& d : chain) {
        for (std::uint32_t off = 0; off < d.len; off += sizeof(std::uint32_t)) {
            std::uint8_t b[4];
            std::memcpy(b, d.host + off, sizeof b); // one read of memory the guest may change
            const std::uint32_t pfn = static_cast<std::uint32_t>(b[0]) | static_cast<std::uint32_t>(b[1]) << 8 |
                                      static_cast<std::uint32_t>(b[2]) << 16 | static_cast<std::uint32_t>(b[3]) << 24;
            const std::uint64_t addr = std::uint64_t{pfn} << PFN_SHIFT;
            if (!mem.slice(GuestAddr(addr), PAGE_BYTES)) return RequestError::OutsideRam;
            pages.push_back(addr);
        }
    }
    merge(pages, mem, out);
    return RequestError::None;
}

RequestError parse_stats(std::span<const Descriptor> chain, GuestStats& stats) noexcept {
    std::size_t total = 0;
    for (const auto& d : chain) {
        if (d.device_writable) return RequestError::DeviceWritable;
        total += d.len;
        if (total > MAX_STAT_ENTRIES * STAT_ENTRY_BYTES) return RequestError::TooLong;
    }
    if (total % STAT_ENTRY_BYTES != 0) return RequestError::BadLength;
    // Entries may straddle buffers: gather the bytes first (bounded above).
    std::uint8_t buf[MAX_STAT_ENTRIES * STAT_ENTRY_BYTES];
    std::size_t at = 0;
    for (const auto& d : chain) {
        if (d.len != 0) std::memcpy(buf + at, d.host, d.len);
        at += d.len;
    }
    GuestStats next = stats;
    for (std::size_t e = 0; e < total; e += STAT_ENTRY_BYTES) {
        const std::uint16_t tag = static_cast<std::uint16_t>(buf[e] | buf[e + 1] << 8);
        std::uint64_t val = 0;
        for (int i = 7; i >= 0; --i) val = val << 8 | buf[e + 2 + static_cast<std::size_t>(i)];
        if (tag < stat_tag::COUNT) next.values[tag] = val;
    }
    stats = next;
    return RequestError::None;
}

RequestError parse_hint(std::span<const Descriptor> chain, const GuestMemory& mem, HintChain& out) {
    out.cmd_id.reset();
    out.ranges.clear();
    if (chain.size() == 1 && !chain[0].device_writable) {
        if (chain[0].len != sizeof(std::uint32_t)) return RequestError::BadLength;
        std::uint8_t b[4];
        std::memcpy(b, chain[0].host, sizeof b);
        out.cmd_id = static_cast<std::uint32_t>(b[0]) | static_cast<std::uint32_t>(b[1]) << 8 |
                     static_cast<std::uint32_t>(b[2]) << 16 | static_cast<std::uint32_t>(b[3]) << 24;
        return RequestError::None;
    }
    const RequestError e = parse_report(chain, mem, out.ranges);
    if (e == RequestError::DeviceReadable && chain.size() > 1) return RequestError::BadLength;
    return e;
}

RequestError parse_report(std::span<const Descriptor> chain, const GuestMemory& mem, std::vector<PageRange>& out) {
    out.clear();
    if (chain.size() > MAX_RANGES_PER_CHAIN) return RequestError::TooLong;
    for (const auto& d : chain) {
        if (!d.device_writable) return RequestError::DeviceReadable;
        if (const RequestError e = check_range(d.addr.raw(), d.len, mem); e != RequestError::None) return e;
    }
    for (const auto& d : chain) out.push_back(PageRange{d.addr, d.len / PAGE_BYTES});
    return RequestError::None;
}

} // namespace ember::virtio::balloon
