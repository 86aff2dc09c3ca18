#pragma once
// Guest-memory side of booting x86_64 Linux: the e820 map, the zero page (Linux 64-bit boot
// protocol) or hvm_start_info (PVH), the command line, the initrd, identity page tables and GDT.

#include "vmm/base/guest_addr.hpp"
#include "vmm/arch/x86_64/kernel_loader.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ember {

class GuestMemory;

struct E820Entry {
    std::uint64_t addr;
    std::uint64_t size;
    std::uint32_t type; // 1 = RAM, 2 = reserved
};
inline constexpr std::uint32_t E820_RAM = 1;
inline constexpr std::uint32_t E820_RESERVED = 2;

// RAM below the EBDA, RAM from 1 MiB to the gap, RAM above 4 GiB; the EBDA (MP table) and the
// legacy BIOS hole are left out, so Linux treats them as reserved.
std::vector<E820Entry> build_e820(const GuestMemory& mem);

struct InitrdPlacement {
    GuestAddr addr;
    std::uint64_t size = 0;
};

// Reads the initrd from `fd` to the highest page-aligned address where it ends below
// min(initrd_addr_max, end of low RAM) and starts above the kernel.
InitrdPlacement load_initrd(int fd, std::uint64_t size, const std::string& path, const KernelImage& k,
                            const GuestMemory& mem);

// Writes the command line, boot structures, page tables and GDT for `k`. Throws ConfigError when
// the command line is longer than the kernel accepts.
void write_boot_info(const GuestMemory& mem, const KernelImage& k, const std::string& cmdline,
                     const std::optional<InitrdPlacement>& initrd);

// GDT entries Ember installs at layout::BOOT_GDT: null, code, data, TSS (boot.rst / PVH ABI).
std::vector<std::uint64_t> boot_gdt(BootProtocol p);

} // namespace ember
