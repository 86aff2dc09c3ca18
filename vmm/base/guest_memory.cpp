#include "vmm/base/guest_memory.hpp"

#include "vmm/base/error.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <sys/mman.h>
#include <sys/stat.h>

namespace ember {
namespace {
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

std::pair<std::vector<MemoryRegion>, std::uint64_t> GuestMemory::plan(const std::vector<std::pair<GuestAddr, std::uint64_t>>& layout) {
    std::uint64_t total = 0;
    std::vector<MemoryRegion> regions;
    for (const auto& [start, size] : layout) {
        auto range = GuestRange::make(start, size);
        if (!range || size == 0 || start.raw() % PAGE_SIZE != 0 || size % PAGE_SIZE != 0)
            throw ConfigError("invalid guest memory region");
        if (!regions.empty() && regions.back().range.last() >= start.raw())
            throw ConfigError("guest memory regions overlap or are unsorted");
        regions.push_back(MemoryRegion{*range, nullptr, total});
        total += size;
    }
    if (regions.empty()) throw ConfigError("guest memory needs at least one region");
    return {std::move(regions), total};
}

GuestMemory GuestMemory::with_regions(const std::vector<std::pair<GuestAddr, std::uint64_t>>& layout) {
    auto [regions, total] = plan(layout);
    Mapping m = map_aligned(total);
    for (auto& r : regions) r.host = m.bytes() + r.offset;
    return GuestMemory(std::move(m), std::move(regions));
}

GuestMemory GuestMemory::with_regions_from_file(const std::vector<std::pair<GuestAddr, std::uint64_t>>& layout, int fd,
                                                const std::string& path) {
    auto [regions, total] = plan(layout);
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw_errno("memory file " + path);
    if (!S_ISREG(st.st_mode)) throw ConfigError("memory file " + path + " is not a regular file");
    if (static_cast<std::uint64_t>(st.st_size) < total)
        throw ConfigError("memory file " + path + " holds " + std::to_string(st.st_size) + " bytes; the guest's RAM is " +
                          std::to_string(total) + " bytes");
    Mapping m = map_aligned(total);
    // MAP_FIXED over our own reservation: nothing else can live there.
    if (::mmap(m.get(), m.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, 0) == MAP_FAILED)
        throw_errno("mmap memory file " + path);
    for (auto& r : regions) r.host = m.bytes() + r.offset;
    return GuestMemory(std::move(m), std::move(regions));
}

GuestMemory::GuestMemory(Mapping m, std::vector<MemoryRegion> r)
    : mapping_(std::move(m)), regions_(std::move(r)), tracking_(std::make_unique<Tracking>()) {
    for (const auto& reg : regions_) {
        const std::size_t pages = static_cast<std::size_t>(reg.range.size() / PAGE_SIZE);
        const std::size_t words = (pages + 63) / 64;
        tracking_->bitmaps.push_back(std::make_unique<std::atomic<std::uint64_t>[]>(words));
        tracking_->words.push_back(words);
    }
}

std::optional<std::pair<std::size_t, std::uint64_t>> GuestMemory::locate(GuestAddr addr, std::uint64_t len) const noexcept {
    for (std::size_t i = 0; i < regions_.size(); ++i) {
        const auto& r = regions_[i];
        const std::uint64_t start = r.range.start().raw();
        if (addr.raw() < start || addr.raw() - start > r.range.size()) continue;
        const std::uint64_t off = addr.raw() - start;
        if (off == r.range.size() && len != 0) continue; // starts where this region ends
        if (len > r.range.size() - off) return std::nullopt; // runs past this region's end
        return std::pair{i, off};
    }
    return std::nullopt;
}

std::optional<std::span<std::byte>> GuestMemory::slice(GuestAddr addr, std::uint64_t len) const noexcept {
    auto at = locate(addr, len);
    if (!at) return std::nullopt;
    return std::span<std::byte>(regions_[at->first].host + at->second, static_cast<std::size_t>(len));
}

std::optional<std::span<std::byte>> GuestMemory::writable(GuestAddr addr, std::uint64_t len) const noexcept {
    auto at = locate(addr, len);
    if (!at) return std::nullopt;
    mark_region(at->first, at->second, len);
    return std::span<std::byte>(regions_[at->first].host + at->second, static_cast<std::size_t>(len));
}

void GuestMemory::mark_region(std::size_t index, std::uint64_t off, std::uint64_t len) const noexcept {
    if (len == 0 || !tracking_->enabled.load(std::memory_order_acquire)) return;
    auto* words = tracking_->bitmaps[index].get();
    const std::uint64_t last = (off + len - 1) / PAGE_SIZE;
    for (std::uint64_t page = off / PAGE_SIZE; page <= last; ++page)
        words[page / 64].fetch_or(std::uint64_t{1} << (page % 64), std::memory_order_relaxed);
}

void GuestMemory::mark_dirty(GuestAddr addr, std::uint64_t len) const noexcept {
    if (len == 0 || !tracking_->enabled.load(std::memory_order_acquire)) return;
    // A range may span regions or reach into the gap: mark what of it is RAM.
    const std::uint64_t last = len - 1 > UINT64_MAX - addr.raw() ? UINT64_MAX : addr.raw() + (len - 1);
    for (std::size_t i = 0; i < regions_.size(); ++i) {
        const auto& r = regions_[i];
        const std::uint64_t start = r.range.start().raw();
        const std::uint64_t lo = std::max(start, addr.raw());
        const std::uint64_t hi = std::min(r.range.last(), last);
        if (lo <= hi) mark_region(i, lo - start, hi - lo + 1);
    }
}

void GuestMemory::enable_dirty_tracking() noexcept {
    for (std::size_t i = 0; i < regions_.size(); ++i)
        for (std::size_t w = 0; w < tracking_->words[i]; ++w) tracking_->bitmaps[i][w].store(0, std::memory_order_relaxed);
    tracking_->enabled.store(true, std::memory_order_release);
}

void GuestMemory::disable_dirty_tracking() noexcept { tracking_->enabled.store(false, std::memory_order_release); }

std::vector<std::uint64_t> GuestMemory::take_dirty_bitmap(std::size_t index) noexcept {
    std::vector<std::uint64_t> out;
    if (index >= regions_.size()) return out;
    try {
        out.resize(tracking_->words[index]);
    } catch (...) {
        return {};
    }
    for (std::size_t w = 0; w < out.size(); ++w) out[w] = tracking_->bitmaps[index][w].exchange(0, std::memory_order_relaxed);
    return out;
}

void GuestMemory::restore_dirty_bitmap(std::size_t index, std::span<const std::uint64_t> bits) noexcept {
    if (index >= regions_.size()) return;
    const std::size_t n = std::min(bits.size(), tracking_->words[index]);
    for (std::size_t w = 0; w < n; ++w) tracking_->bitmaps[index][w].fetch_or(bits[w], std::memory_order_relaxed);
}

std::vector<std::uint64_t> GuestMemory::resident_bitmap(std::size_t index) const {
    if (index >= regions_.size()) return {};
    const auto& r = regions_[index];
    const std::size_t pages = static_cast<std::size_t>(r.range.size() / PAGE_SIZE);
    std::vector<std::uint64_t> out((pages + 63) / 64);
    // mincore fills one byte per page; bit 0 set = resident (mincore(2)). In chunks, so a large
    // region does not need a byte per page at once.
    constexpr std::size_t kChunk = 64 * 1024;
    std::vector<unsigned char> vec(std::min(pages, kChunk));
    for (std::size_t first = 0; first < pages; first += kChunk) {
        const std::size_t n = std::min(kChunk, pages - first);
        if (::mincore(r.host + first * PAGE_SIZE, n * PAGE_SIZE, vec.data()) != 0) throw_errno("mincore of guest memory");
        for (std::size_t i = 0; i < n; ++i)
            if (vec[i] & 1u) out[(first + i) / 64] |= std::uint64_t{1} << ((first + i) % 64);
    }
    return out;
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

int GuestMemory::discard(GuestAddr addr, std::uint64_t len) const noexcept {
    if (len == 0 || addr.raw() % PAGE_SIZE != 0 || len % PAGE_SIZE != 0) return EINVAL;
    auto at = locate(addr, len);
    if (!at) return EINVAL;
    mark_region(at->first, at->second, len);
    if (::madvise(regions_[at->first].host + at->second, static_cast<std::size_t>(len), MADV_DONTNEED) != 0) return errno;
    return 0;
}

bool GuestMemory::read(GuestAddr addr, std::span<std::byte> out) const noexcept {
    auto s = slice(addr, out.size());
    if (!s) return false;
    if (!out.empty()) std::memcpy(out.data(), s->data(), out.size());
    return true;
}

bool GuestMemory::write(GuestAddr addr, std::span<const std::byte> in) const noexcept {
    auto s = writable(addr, in.size());
    if (!s) return false;
    if (!in.empty()) std::memcpy(s->data(), in.data(), in.size());
    return true;
}

GuestAddr GuestMemory::low_ram_end() const noexcept {
    const auto& r = regions_.front().range;
    return GuestAddr(r.start().raw() + r.size());
}

} // namespace ember
