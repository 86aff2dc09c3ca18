#include "vmm/arch/x86_64/layout.hpp"

#include "vmm/base/error.hpp"

#include <utility>
#include <vector>

namespace ember::layout {

std::vector<std::pair<GuestAddr, std::uint64_t>> ram_regions(std::uint64_t bytes) {
    if (bytes == 0 || bytes % (4 * KiB) != 0) throw ConfigError("guest memory size must be a non-zero multiple of 4 KiB");
    std::vector<std::pair<GuestAddr, std::uint64_t>> regions;
    const std::uint64_t low = bytes < MMIO_GAP_START ? bytes : MMIO_GAP_START;
    regions.emplace_back(GuestAddr(0), low);
    if (bytes > low) regions.emplace_back(GuestAddr(MMIO_GAP_END), bytes - low);
    return regions;
}

GuestMemory guest_memory(std::uint64_t bytes) { return GuestMemory::with_regions(ram_regions(bytes)); }

} // namespace ember::layout
