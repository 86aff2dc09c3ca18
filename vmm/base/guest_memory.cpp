#include "vmm/base/guest_memory.hpp"

#include "vmm/base/error.hpp"

#include <cstdio>
#include <sys/mman.h>

namespace ember {
namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kHuge = std::uint64_t{2} << 20;
} // namespace

Mapping GuestMemory::map_aligned(std::uint64_t bytes) {
    // Over-allocate by one huge page and trim, so the start is 2 MiB aligned.
    const std::size_t len = static_cast<std::size_t>(bytes);
    Mapping raw = Mapping::map(len + kHuge, PROT_READ | PROT_WRITE,
                               MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, "guest memory");
    auto base = reinterpret_cast<std::uintptr_t>(raw.get());
    std::uintptr_t aligned = (base + kHuge - 1) & ~static_cast<std::uintptr_t>(kHuge - 1);
    std::size_t head = aligned - base;
    std::size_t tail = kHuge - head;
    void* p = raw.release(); // ownership moves to `kept`; the untrimmed ends are unmapped here
    Mapping kept(reinterpret_cast<void*>(aligned), len);
    if (head != 0) ::munmap(p, head);
    if (tail != 0) ::munmap(reinterpret_cast<void*>(aligned + len), tail);
    return kept;
}

GuestMemory GuestMemory::with_regions(const std::vector<std::pair<GuestAddr, std::uint64_t>>& layout) {
    std::uint64_t total = 0;
    std::vector<MemoryRegion> regions;
    for (const auto& [start, size] : layout) {
        auto range = GuestRange::make(start, size);
        if (!range || size == 0 || start.raw() % kPage != 0 || size % kPage != 0)
            throw ConfigError("invalid guest memory region");
        if (!regions.empty() && regions.back().range.last() >= start.raw())
            throw ConfigError("guest memory regions overlap or are unsorted");
        regions.push_back(MemoryRegion{*range, nullptr, total});
        total += size;
    }
    if (regions.empty()) throw ConfigError("guest memory needs at least one region");
    Mapping m = map_aligned(total);
    for (auto& r : regions) r.host = m.bytes() + r.offset;
    return GuestMemory(std::move(m), std::move(regions));
}

std::optional<std::span<std::byte>> GuestMemory::slice(GuestAddr addr, std::uint64_t len) const noexcept {
    for (const auto& r : regions_) {
        const std::uint64_t start = r.range.start().raw();
        if (addr.raw() < start || addr.raw() - start > r.range.size()) continue;
        const std::uint64_t off = addr.raw() - start;
        if (off == r.range.size() && len != 0) continue; // starts where this region ends
        if (len > r.range.size() - off) return std::nullopt; // runs past this region's end
        return std::span<std::byte>(r.host + off, static_cast<std::size_t>(len));
    }
    return std::nullopt;
}

std::span<std::byte> GuestMemory::slice_or_throw(GuestAddr addr, std::uint64_t len, const std::string& what) const {
    auto s = slice(addr, len);
    if (!s) {
        char buf[96];
        std::snprintf(buf, sizeof buf, " [0x%llx, +0x%llx) is outside guest RAM",
                      static_cast<unsigned long long>(addr.raw()), static_cast<unsigned long long>(len));
        throw ConfigError(what + buf);
    }
    return *s;
}

bool GuestMemory::read(GuestAddr addr, std::span<std::byte> out) const noexcept {
    auto s = slice(addr, out.size());
    if (!s) return false;
    if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
    return true;
}

bool GuestMemory::write(GuestAddr addr, std::span<const std::byte> in) const noexcept {
    auto s = slice(addr, in.size());
    if (!s) return false;
    if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
    return true;
}

GuestAddr GuestMemory::low_ram_end() const noexcept {
    const auto& r = regions_.front().range;
    return GuestAddr(r.start().raw() + r.size());
}

} // namespace ember
