#pragma once
// Ember's x86_64 guest-physical layout. Where a choice was free, these are Firecracker's
// addresses (arch/src/x86_64/layout.rs), so guests and tooling see the same machine.

#include "vmm/base/guest_memory.hpp"

#include <cstdint>
#include <utility>
#include <vector>

namespace ember::layout {

inline constexpr std::uint64_t KiB = 1024;
inline constexpr std::uint64_t MiB = 1024 * KiB;
inline constexpr std::uint64_t GiB = 1024 * MiB;

// Low memory used by the boot path (all below 1 MiB, inside the first RAM region).
inline constexpr std::uint64_t BOOT_GDT = 0x500;
inline constexpr std::uint64_t BOOT_IDT = 0x520;
inline constexpr std::uint64_t PVH_INFO = 0x6000;       // struct hvm_start_info
inline constexpr std::uint64_t PVH_MODLIST = 0x6040;    // hvm_modlist_entry[1] (initrd)
inline constexpr std::uint64_t PVH_MEMMAP = 0x7000;     // hvm_memmap_table_entry[]
inline constexpr std::uint64_t ZERO_PAGE = 0x7000;      // struct boot_params (Linux boot)
inline constexpr std::uint64_t BOOT_STACK = 0x8ff0;
inline constexpr std::uint64_t PML4 = 0x9000;
inline constexpr std::uint64_t PDPTE = 0xa000;
inline constexpr std::uint64_t PDE = 0xb000;
inline constexpr std::uint64_t CMDLINE = 0x20000;
inline constexpr std::uint64_t CMDLINE_MAX = 4096;      // bytes, including the NUL
inline constexpr std::uint64_t EBDA_START = 0x9fc00;    // MP table lives here
inline constexpr std::uint64_t MPTABLE = EBDA_START;
inline constexpr std::uint64_t HIMEM_START = 0x100000;  // bzImage protected-mode kernel

// The 32-bit MMIO gap: no RAM in [3 GiB, 4 GiB). Devices, LAPIC, IOAPIC and KVM's TSS live here.
inline constexpr std::uint64_t MMIO_GAP_START = 3 * GiB;
inline constexpr std::uint64_t MMIO_GAP_END = 4 * GiB;
inline constexpr std::uint64_t BOOT_TIMER = 0xc000'0000;   // Firecracker's boot-timer device
inline constexpr std::uint64_t VIRTIO_MMIO_BASE = 0xc000'1000;
inline constexpr std::uint64_t VIRTIO_MMIO_SLOT = 0x1000;
inline constexpr std::uint64_t IOAPIC_ADDR = 0xfec0'0000;
inline constexpr std::uint64_t LAPIC_ADDR = 0xfee0'0000;
inline constexpr std::uint64_t KVM_IDENTITY_MAP = 0xfffb'c000; // one page
inline constexpr std::uint64_t KVM_TSS = 0xfffb'd000;          // three pages

inline constexpr std::uint32_t IRQ_SERIAL = 4;
inline constexpr std::uint32_t IRQ_I8042 = 1;
inline constexpr std::uint32_t IRQ_VIRTIO_BASE = 5;    // virtio-mmio devices get 5, 6, ...
inline constexpr std::uint32_t IRQ_MAX = 23;           // last IOAPIC pin

inline constexpr std::uint16_t PORT_COM1 = 0x3f8;
inline constexpr std::uint16_t PORT_I8042_DATA = 0x60;
inline constexpr std::uint16_t PORT_I8042_CMD = 0x64;

// Guest RAM of `bytes` bytes (a non-zero multiple of 4 KiB) laid out around the MMIO gap:
// [0, min(bytes, 3 GiB)) and the rest from 4 GiB. Throws ConfigError.
std::vector<std::pair<GuestAddr, std::uint64_t>> ram_regions(std::uint64_t bytes);
// Guest RAM of `bytes` laid out by ram_regions().
GuestMemory guest_memory(std::uint64_t bytes);

} // namespace ember::layout
