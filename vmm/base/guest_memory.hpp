#pragma once
// Guest RAM. The only way to reach guest bytes is slice(addr, len), which checks that the whole
// range lies inside one RAM region: wrap-around, region crossings and the MMIO gap are rejected.

#include "vmm/base/guest_addr.hpp"
#include "vmm/base/unique_fd.hpp"

#include <cstddef>
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

private:
    GuestMemory(Mapping m, std::vector<MemoryRegion> r) : mapping_(std::move(m)), regions_(std::move(r)) {}
    static Mapping map_aligned(std::uint64_t bytes);
    Mapping mapping_;
    std::vector<MemoryRegion> regions_;
};

} // namespace ember
