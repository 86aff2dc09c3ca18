#include "vmm/arch/x86_64/x86_boot.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <unistd.h>

namespace ember {
namespace {

constexpr std::uint32_t PVH_MAGIC = 0x336ec578; // XEN_HVM_START_MAGIC_VALUE
constexpr std::size_t E820_MAX_ZEROPAGE = 128;
constexpr std::size_t ZP_EXT_CMD_LINE_PTR = 0x0c8;
constexpr std::size_t ZP_E820_ENTRIES = 0x1e8;
constexpr std::size_t ZP_E820_TABLE = 0x2d0;

template <class T>
void put(std::vector<std::uint8_t>& b, std::size_t off, T v) {
    std::memcpy(b.data() + off, &v, sizeof v);
}

void write_or_throw(const GuestMemory& mem, std::uint64_t addr, const std::vector<std::uint8_t>& b, const char* what) {
    auto dst = mem.slice_or_throw(GuestAddr(addr), b.size(), what);
    std::memcpy(dst.data(), b.data(), b.size());
}

std::vector<std::uint8_t> zero_page(const KernelImage& k, const std::optional<InitrdPlacement>& initrd,
                                    const std::vector<E820Entry>& e820) {
    std::vector<std::uint8_t> zp(4096, 0);
    if (k.setup_sector) {
        // Copy the setup header as the image carries it: from 0x1f1 to 0x202 + byte 0x201.
        const auto& s = *k.setup_sector;
        const std::size_t end = std::min<std::size_t>(bzhdr::HEADER + s[bzhdr::JUMP + 1], s.size());
        std::memcpy(zp.data() + bzhdr::SETUP_SECTS, s.data() + bzhdr::SETUP_SECTS, end - bzhdr::SETUP_SECTS);
    } else {
        // A vmlinux entered at startup_64 still reads these header fields.
        put<std::uint16_t>(zp, bzhdr::BOOT_FLAG, 0xaa55);
        put<std::uint32_t>(zp, bzhdr::HEADER, bzhdr::MAGIC_HDRS);
        put<std::uint32_t>(zp, bzhdr::KERNEL_ALIGNMENT, 0x0100'0000);
    }
    zp[bzhdr::TYPE_OF_LOADER] = 0xff; // "undefined" boot loader
    zp[bzhdr::LOADFLAGS] |= bzhdr::LOADED_HIGH;
    put<std::uint32_t>(zp, bzhdr::CMD_LINE_PTR, static_cast<std::uint32_t>(layout::CMDLINE));
    put<std::uint32_t>(zp, ZP_EXT_CMD_LINE_PTR, 0);
    if (initrd) {
        put<std::uint32_t>(zp, bzhdr::RAMDISK_IMAGE, static_cast<std::uint32_t>(initrd->addr.raw()));
        put<std::uint32_t>(zp, bzhdr::RAMDISK_SIZE, static_cast<std::uint32_t>(initrd->size));
    }
    if (e820.size() > E820_MAX_ZEROPAGE) throw ConfigError("too many e820 entries for the zero page");
    zp[ZP_E820_ENTRIES] = static_cast<std::uint8_t>(e820.size());
    for (std::size_t i = 0; i < e820.size(); ++i) {
        const std::size_t at = ZP_E820_TABLE + i * 20;
        put(zp, at, e820[i].addr);
        put(zp, at + 8, e820[i].size);
        put(zp, at + 16, e820[i].type);
    }
    return zp;
}

void write_pvh_info(const GuestMemory& mem, const std::optional<InitrdPlacement>& initrd,
                    const std::vector<E820Entry>& e820) {
    // struct hvm_start_info, version 1 (xen/include/public/arch-x86/hvm/start_info.h).
    std::vector<std::uint8_t> info(56, 0);
    put<std::uint32_t>(info, 0, PVH_MAGIC);
    put<std::uint32_t>(info, 4, 1);
    put<std::uint32_t>(info, 12, initrd ? 1u : 0u);
    put<std::uint64_t>(info, 16, initrd ? layout::PVH_MODLIST : 0);
    put<std::uint64_t>(info, 24, layout::CMDLINE);
    put<std::uint64_t>(info, 40, layout::PVH_MEMMAP);
    put<std::uint32_t>(info, 48, static_cast<std::uint32_t>(e820.size()));
    write_or_throw(mem, layout::PVH_INFO, info, "PVH start info");
    if (initrd) {
        std::vector<std::uint8_t> mod(32, 0); // struct hvm_modlist_entry
        put<std::uint64_t>(mod, 0, initrd->addr.raw());
        put<std::uint64_t>(mod, 8, initrd->size);
        write_or_throw(mem, layout::PVH_MODLIST, mod, "PVH module list");
    }
    std::vector<std::uint8_t> map(e820.size() * 24, 0); // struct hvm_memmap_table_entry[]
    for (std::size_t i = 0; i < e820.size(); ++i) {
        put(map, i * 24, e820[i].addr);
        put(map, i * 24 + 8, e820[i].size);
        put(map, i * 24 + 16, e820[i].type);
    }
    write_or_throw(mem, layout::PVH_MEMMAP, map, "PVH memory map");
}

void write_page_tables(const GuestMemory& mem) {
    // Identity-map the first 1 GiB with 2 MiB pages: covers the kernel, zero page and command
    // line, which is what the 64-bit boot protocol requires to be mapped at entry.
    std::vector<std::uint8_t> pml4(4096, 0), pdpte(4096, 0), pde(4096, 0);
    put<std::uint64_t>(pml4, 0, layout::PDPTE | 0x03);
    put<std::uint64_t>(pdpte, 0, layout::PDE | 0x03);
    for (std::uint64_t i = 0; i < 512; ++i) put<std::uint64_t>(pde, i * 8, (i << 21) | 0x83);
    write_or_throw(mem, layout::PML4, pml4, "PML4");
    write_or_throw(mem, layout::PDPTE, pdpte, "PDPTE");
    write_or_throw(mem, layout::PDE, pde, "PDE");
}

} // namespace

std::vector<E820Entry> build_e820(const GuestMemory& mem) {
    std::vector<E820Entry> e;
    const std::uint64_t low_end = mem.low_ram_end().raw();
    e.push_back({0, std::min(low_end, layout::EBDA_START), E820_RAM});
    if (low_end > layout::HIMEM_START) e.push_back({layout::HIMEM_START, low_end - layout::HIMEM_START, E820_RAM});
    for (std::size_t i = 1; i < mem.regions().size(); ++i) {
        const auto& r = mem.regions()[i].range;
        e.push_back({r.start().raw(), r.size(), E820_RAM});
    }
    return e;
}

InitrdPlacement load_initrd(int fd, std::uint64_t size, const std::string& path, const KernelImage& k,
                            const GuestMemory& mem) {
    if (size == 0) throw ConfigError("initrd " + path + " is empty");
    const std::uint64_t limit = std::min<std::uint64_t>(std::uint64_t{k.initrd_addr_max} + 1, mem.low_ram_end().raw());
    const std::uint64_t floor = (k.end.raw() + 4095) & ~std::uint64_t{4095};
    if (size > limit || ((limit - size) & ~std::uint64_t{4095}) < floor)
        throw ConfigError("initrd " + path + " (" + std::to_string(size >> 10) + " KiB) does not fit in guest RAM between the kernel's end and " +
                          std::to_string(limit >> 20) + " MiB");
    const std::uint64_t addr = (limit - size) & ~std::uint64_t{4095};
    auto dst = mem.slice_or_throw(GuestAddr(addr), size, "initrd");
    std::size_t done = 0;
    while (done < dst.size()) {
        ssize_t n = ::pread(fd, dst.data() + done, dst.size() - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("initrd " + path + ": " + std::strerror(errno));
        if (n == 0) throw ConfigError("initrd " + path + " shrank while being read");
        done += static_cast<std::size_t>(n);
    }
    return {GuestAddr(addr), size};
}

std::vector<std::uint64_t> boot_gdt(BootProtocol p) {
    // Flat segments. Linux64: 64-bit code (L=1). PVH: 32-bit code (D=1), as the PVH ABI requires.
    if (p == BootProtocol::Pvh) return {0, 0x00cf'9b00'0000'ffff, 0x00cf'9300'0000'ffff, 0x0000'8b00'0000'0067};
    return {0, 0x00af'9b00'0000'ffff, 0x00cf'9300'0000'ffff, 0x0000'8b00'0000'0067};
}

void write_boot_info(const GuestMemory& mem, const KernelImage& k, const std::string& cmdline,
                     const std::optional<InitrdPlacement>& initrd) {
    const std::uint64_t max = std::min<std::uint64_t>(k.cmdline_max, layout::CMDLINE_MAX - 1);
    if (cmdline.size() > max)
        throw ConfigError("kernel command line is " + std::to_string(cmdline.size()) + " bytes; the kernel accepts at most " +
                          std::to_string(max));
    if (cmdline.find('\0') != std::string::npos) throw ConfigError("kernel command line contains a NUL byte");
    std::vector<std::uint8_t> cl(cmdline.begin(), cmdline.end());
    cl.push_back(0);
    write_or_throw(mem, layout::CMDLINE, cl, "command line");

    const auto e820 = build_e820(mem);
    if (k.protocol == BootProtocol::Pvh) {
        write_pvh_info(mem, initrd, e820);
    } else {
        write_or_throw(mem, layout::ZERO_PAGE, zero_page(k, initrd, e820), "zero page");
        write_page_tables(mem);
    }
    std::vector<std::uint8_t> gdt;
    for (std::uint64_t d : boot_gdt(k.protocol)) {
        const auto* b = reinterpret_cast<const std::uint8_t*>(&d);
        gdt.insert(gdt.end(), b, b + 8);
    }
    write_or_throw(mem, layout::BOOT_GDT, gdt, "GDT");
    write_or_throw(mem, layout::BOOT_IDT, std::vector<std::uint8_t>(8, 0), "IDT");
}

} // namespace ember
