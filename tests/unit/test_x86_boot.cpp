// Guest-memory side of x86 boot: e820, initrd placement, zero page / hvm_start_info, page
// tables, command line and GDT.

#include "test_util.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/kernel_loader.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/arch/x86_64/x86_boot.hpp"
#include "vmm/arch/x86_64/x86_cpu.hpp"

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

using namespace ember;
using ember::layout::GiB;
using ember::layout::MiB;
using ember::test::MemFile;

namespace {

template <class T>
T rd(const GuestMemory& mem, std::uint64_t addr) {
    T v{};
    REQUIRE(mem.read_obj(GuestAddr(addr), v));
    return v;
}

std::vector<std::uint8_t> rd_bytes(const GuestMemory& mem, std::uint64_t addr, std::size_t n) {
    std::vector<std::uint8_t> b(n);
    REQUIRE(mem.read(GuestAddr(addr), std::as_writable_bytes(std::span(b))));
    return b;
}

void fill(const GuestMemory& mem, std::uint64_t addr, std::size_t n, std::uint8_t v) {
    std::vector<std::uint8_t> b(n, v);
    REQUIRE(mem.write(GuestAddr(addr), std::as_bytes(std::span(b))));
}

KernelImage elf_kernel(BootProtocol p, std::uint64_t end = 0x100000 + 4 * MiB) {
    KernelImage k;
    k.protocol = p;
    k.entry = GuestAddr(p == BootProtocol::Pvh ? 0x1000c0 : 0x1000000);
    k.end = GuestAddr(end);
    return k;
}

std::vector<std::uint8_t> pattern_bytes(std::size_t n) {
    std::vector<std::uint8_t> b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::uint8_t>((i * 31 + 7) & 0xff);
    return b;
}

constexpr std::uint64_t ZP = layout::ZERO_PAGE;

} // namespace

// ---------------------------------------------------------------------------------------------
// e820

TEST_CASE("e820 for 128 MiB: low RAM below the EBDA and RAM from 1 MiB") {
    auto mem = layout::guest_memory(128 * MiB);
    const auto e = build_e820(mem);
    REQUIRE(e.size() == 2);
    CHECK(e[0].addr == 0);
    CHECK(e[0].size == 0x9fc00);
    CHECK(e[0].type == E820_RAM);
    CHECK(e[1].addr == 1 * MiB);
    CHECK(e[1].size == 127 * MiB);
    CHECK(e[1].type == E820_RAM);
}

TEST_CASE("e820 above 4 GiB: RAM up to the MMIO gap, then from 4 GiB") {
    auto mem = layout::guest_memory(4 * GiB + 512 * MiB);
    const auto e = build_e820(mem);
    REQUIRE(e.size() == 3);
    CHECK(e[0].addr == 0);
    CHECK(e[0].size == 0x9fc00);
    CHECK(e[1].addr == 1 * MiB);
    CHECK(e[1].addr + e[1].size == 3 * GiB);
    CHECK(e[2].addr == 4 * GiB);
    CHECK(e[2].size == 1 * GiB + 512 * MiB);
    CHECK(e[2].type == E820_RAM);
    // No entry touches the EBDA, the BIOS hole or the MMIO gap.
    for (const auto& x : e) {
        CHECK_FALSE((x.addr < 1 * MiB && x.addr + x.size > 0x9fc00));
        CHECK_FALSE((x.addr < 4 * GiB && x.addr + x.size > 3 * GiB));
    }
}

// ---------------------------------------------------------------------------------------------
// initrd

TEST_CASE("initrd goes to the highest page-aligned address below the limit, above the kernel") {
    auto mem = layout::guest_memory(128 * MiB);
    const auto data = pattern_bytes(0x12345);
    MemFile f(data);
    KernelImage k = elf_kernel(BootProtocol::Linux64);

    SECTION("limited by the end of RAM") {
        k.initrd_addr_max = 0x37ff'ffff; // 896 MiB: above RAM
        const auto p = load_initrd(f.fd(), f.size(), "initrd", k, mem);
        CHECK(p.size == data.size());
        CHECK(p.addr.raw() % 4096 == 0);
        CHECK(p.addr.raw() + p.size <= 128 * MiB);
        CHECK(p.addr.raw() + p.size + 4096 > 128 * MiB); // highest such address
        CHECK(p.addr.raw() >= k.end.raw());
        CHECK(rd_bytes(mem, p.addr.raw(), data.size()) == data);
    }
    SECTION("limited by initrd_addr_max") {
        k.initrd_addr_max = 32 * MiB - 1;
        const auto p = load_initrd(f.fd(), f.size(), "initrd", k, mem);
        CHECK(p.addr.raw() % 4096 == 0);
        CHECK(p.addr.raw() + p.size <= 32 * MiB);
        CHECK(p.addr.raw() + p.size + 4096 > 32 * MiB);
        CHECK(rd_bytes(mem, p.addr.raw(), data.size()) == data);
    }
    SECTION("initrd_addr_max not page-aligned minus one") {
        k.initrd_addr_max = 0x01ff'f7ff; // initrd must end at or below 0x1fff800
        const auto p = load_initrd(f.fd(), f.size(), "initrd", k, mem);
        CHECK(p.addr.raw() % 4096 == 0);
        CHECK(p.addr.raw() + p.size <= 0x01ff'f800);
    }
}

TEST_CASE("initrd above 4 GiB of RAM stays below the MMIO gap") {
    auto mem = layout::guest_memory(4 * GiB + 256 * MiB);
    const auto data = pattern_bytes(10000);
    MemFile f(data);
    KernelImage k = elf_kernel(BootProtocol::Linux64); // initrd_addr_max 0xffffffff
    const auto p = load_initrd(f.fd(), f.size(), "initrd", k, mem);
    CHECK(p.addr.raw() + p.size <= 3 * GiB);
    CHECK(p.addr.raw() + p.size + 4096 > 3 * GiB);
    CHECK(rd_bytes(mem, p.addr.raw(), data.size()) == data);
}

TEST_CASE("initrd that exactly fits between the kernel and the limit") {
    auto mem = layout::guest_memory(16 * MiB);
    KernelImage k = elf_kernel(BootProtocol::Linux64, 15 * MiB - 100); // floor rounds up to 15 MiB
    const auto data = pattern_bytes(1 * MiB);
    MemFile f(data);
    const auto p = load_initrd(f.fd(), f.size(), "initrd", k, mem);
    CHECK(p.addr.raw() == 15 * MiB);
    CHECK(rd_bytes(mem, p.addr.raw() + MiB - 16, 16) == std::vector<std::uint8_t>(data.end() - 16, data.end()));
    // One byte more pushes the start below the page the kernel ends in.
    CHECK_CONFIG_ERROR(load_initrd(f.fd(), 1 * MiB + 1, "initrd", k, mem), "does not fit");
}

TEST_CASE("initrd errors") {
    auto mem = layout::guest_memory(128 * MiB);
    KernelImage k = elf_kernel(BootProtocol::Linux64);
    MemFile f(pattern_bytes(4096));
    SECTION("empty") { CHECK_CONFIG_ERROR(load_initrd(f.fd(), 0, "initrd.img", k, mem), "empty"); }
    SECTION("bigger than RAM") { CHECK_CONFIG_ERROR(load_initrd(f.fd(), 256 * MiB, "initrd.img", k, mem), "does not fit"); }
    SECTION("bigger than the space above the kernel") {
        CHECK_CONFIG_ERROR(load_initrd(f.fd(), 124 * MiB, "initrd.img", k, mem), "does not fit");
    }
    SECTION("initrd_addr_max below the kernel") {
        k.initrd_addr_max = 2 * MiB - 1;
        CHECK_CONFIG_ERROR(load_initrd(f.fd(), 4096, "initrd.img", k, mem), "does not fit");
    }
    SECTION("file shorter than its size") {
        CHECK_CONFIG_ERROR(load_initrd(f.fd(), 8192, "initrd.img", k, mem), "shrank");
    }
}

// ---------------------------------------------------------------------------------------------
// write_boot_info: Linux 64-bit boot protocol

TEST_CASE("Linux64 boot info: zero page, e820, page tables, command line") {
    auto mem = layout::guest_memory(128 * MiB);
    fill(mem, layout::CMDLINE, 256, 0xcc); // the NUL must be written, not found
    const KernelImage k = elf_kernel(BootProtocol::Linux64);
    const std::string cmdline = "console=ttyS0 reboot=k panic=1";
    const InitrdPlacement initrd{GuestAddr(0x07f0'0000), 0x12345};
    write_boot_info(mem, k, cmdline, initrd);

    // Setup header fields a vmlinux entered at startup_64 still reads.
    CHECK(rd<std::uint16_t>(mem, ZP + 0x1fe) == 0xaa55);
    CHECK(rd<std::uint32_t>(mem, ZP + 0x202) == 0x53726448);
    CHECK(rd<std::uint8_t>(mem, ZP + 0x210) == 0xff);         // type_of_loader
    CHECK((rd<std::uint8_t>(mem, ZP + 0x211) & 0x01) != 0);   // LOADED_HIGH
    CHECK(rd<std::uint32_t>(mem, ZP + 0x228) == 0x20000);     // cmd_line_ptr
    CHECK(rd<std::uint32_t>(mem, ZP + 0x0c8) == 0);           // ext_cmd_line_ptr
    CHECK(rd<std::uint32_t>(mem, ZP + 0x218) == 0x07f0'0000); // ramdisk_image
    CHECK(rd<std::uint32_t>(mem, ZP + 0x21c) == 0x12345);     // ramdisk_size

    // e820 table: count at 0x1e8, 20-byte entries at 0x2d0.
    REQUIRE(rd<std::uint8_t>(mem, ZP + 0x1e8) == 2);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0) == 0);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 8) == 0x9fc00);
    CHECK(rd<std::uint32_t>(mem, ZP + 0x2d0 + 16) == 1);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 20) == 1 * MiB);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 28) == 127 * MiB);
    CHECK(rd<std::uint32_t>(mem, ZP + 0x2d0 + 36) == 1);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 40) == 0); // no third entry

    // Identity page tables: PML4 -> PDPTE -> PDE with 2 MiB pages covering 1 GiB.
    CHECK(rd<std::uint64_t>(mem, 0x9000) == 0xa003);
    CHECK(rd<std::uint64_t>(mem, 0x9008) == 0);
    CHECK(rd<std::uint64_t>(mem, 0xa000) == 0xb003);
    CHECK(rd<std::uint64_t>(mem, 0xa008) == 0);
    CHECK(rd<std::uint64_t>(mem, 0xb000) == 0x83);
    CHECK(rd<std::uint64_t>(mem, 0xb008) == 0x200083);
    CHECK(rd<std::uint64_t>(mem, 0xb000 + 511 * 8) == ((std::uint64_t{511} << 21) | 0x83));

    // Command line, NUL-terminated.
    const auto cl = rd_bytes(mem, layout::CMDLINE, cmdline.size() + 2);
    CHECK(std::string(cl.begin(), cl.begin() + static_cast<std::ptrdiff_t>(cmdline.size())) == cmdline);
    CHECK(cl[cmdline.size()] == 0);
    CHECK(cl[cmdline.size() + 1] == 0xcc);

    // GDT at 0x500 holds boot_gdt(Linux64); IDT at 0x520 is empty.
    const auto gdt = boot_gdt(BootProtocol::Linux64);
    for (std::size_t i = 0; i < gdt.size(); ++i) CHECK(rd<std::uint64_t>(mem, layout::BOOT_GDT + i * 8) == gdt[i]);
    CHECK(rd<std::uint64_t>(mem, layout::BOOT_IDT) == 0);
}

TEST_CASE("Linux64 boot info without an initrd and with RAM above 4 GiB") {
    auto mem = layout::guest_memory(4 * GiB + 256 * MiB);
    fill(mem, ZP + 0x218, 8, 0xee);
    write_boot_info(mem, elf_kernel(BootProtocol::Linux64), "", std::nullopt);
    CHECK(rd<std::uint32_t>(mem, ZP + 0x218) == 0);
    CHECK(rd<std::uint32_t>(mem, ZP + 0x21c) == 0);
    REQUIRE(rd<std::uint8_t>(mem, ZP + 0x1e8) == 3);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 40) == 4 * GiB);
    CHECK(rd<std::uint64_t>(mem, ZP + 0x2d0 + 48) == 1 * GiB + 256 * MiB); // 3 GiB sit below the gap
    CHECK(rd<std::uint32_t>(mem, ZP + 0x2d0 + 56) == 1);
    CHECK(rd<std::uint8_t>(mem, layout::CMDLINE) == 0); // empty command line is just the NUL
}

TEST_CASE("Linux64 boot info for a bzImage copies the image's setup header") {
    auto mem = layout::guest_memory(128 * MiB);
    KernelImage k = elf_kernel(BootProtocol::Linux64);
    std::array<std::uint8_t, 1024> s{};
    s[bzhdr::SETUP_SECTS] = 27;
    s[bzhdr::BOOT_FLAG] = 0x55;
    s[bzhdr::BOOT_FLAG + 1] = 0xaa;
    s[bzhdr::JUMP] = 0xeb;
    s[bzhdr::JUMP + 1] = 0x66; // header ends at 0x268
    std::memcpy(&s[bzhdr::HEADER], "HdrS", 4);
    s[bzhdr::VERSION] = 0x0f;
    s[bzhdr::VERSION + 1] = 0x02;
    s[bzhdr::TYPE_OF_LOADER] = 0x00;
    s[bzhdr::LOADFLAGS] = 0x80; // CAN_USE_HEAP without LOADED_HIGH: the loader sets LOADED_HIGH
    s[bzhdr::INIT_SIZE] = 0x78;
    s[0x267] = 0x42;            // last byte of the header
    s[0x268] = 0x99;            // beyond the header: not copied
    s[0x1f0] = 0x77;            // before the header (0x1f1): not copied
    k.setup_sector = s;
    write_boot_info(mem, k, "x", std::nullopt);

    CHECK(rd<std::uint8_t>(mem, ZP + bzhdr::SETUP_SECTS) == 27);
    CHECK(rd<std::uint16_t>(mem, ZP + bzhdr::VERSION) == 0x020f);
    CHECK(rd<std::uint8_t>(mem, ZP + bzhdr::INIT_SIZE) == 0x78);
    CHECK(rd<std::uint8_t>(mem, ZP + 0x267) == 0x42);
    CHECK(rd<std::uint8_t>(mem, ZP + 0x268) == 0);
    CHECK(rd<std::uint8_t>(mem, ZP + 0x1f0) == 0);
    CHECK(rd<std::uint8_t>(mem, ZP + 0x1e8) == 2);
    CHECK(rd<std::uint8_t>(mem, ZP + bzhdr::TYPE_OF_LOADER) == 0xff);
    CHECK(rd<std::uint8_t>(mem, ZP + bzhdr::LOADFLAGS) == 0x81);
    CHECK(rd<std::uint32_t>(mem, ZP + bzhdr::CMD_LINE_PTR) == 0x20000);
    // A vmlinux-only default must not replace the image's own fields.
    CHECK(rd<std::uint32_t>(mem, ZP + bzhdr::KERNEL_ALIGNMENT) == 0);
}

// ---------------------------------------------------------------------------------------------
// write_boot_info: PVH

TEST_CASE("PVH boot info: hvm_start_info, module list, memory map") {
    auto mem = layout::guest_memory(128 * MiB);
    const KernelImage k = elf_kernel(BootProtocol::Pvh);
    const std::string cmdline = "console=ttyS0";

    SECTION("with an initrd") {
        const InitrdPlacement initrd{GuestAddr(0x0700'0000), 0x54321};
        write_boot_info(mem, k, cmdline, initrd);
        constexpr std::uint64_t I = layout::PVH_INFO;
        CHECK(rd<std::uint32_t>(mem, I + 0) == 0x336ec578);
        CHECK(rd<std::uint32_t>(mem, I + 4) == 1);  // version
        CHECK(rd<std::uint32_t>(mem, I + 8) == 0);  // flags
        CHECK(rd<std::uint32_t>(mem, I + 12) == 1); // nr_modules
        CHECK(rd<std::uint64_t>(mem, I + 16) == 0x6040);
        CHECK(rd<std::uint64_t>(mem, I + 24) == 0x20000);
        CHECK(rd<std::uint64_t>(mem, I + 32) == 0); // rsdp_paddr: no ACPI
        CHECK(rd<std::uint64_t>(mem, I + 40) == 0x7000);
        CHECK(rd<std::uint32_t>(mem, I + 48) == 2);
        // hvm_modlist_entry
        CHECK(rd<std::uint64_t>(mem, 0x6040) == 0x0700'0000);
        CHECK(rd<std::uint64_t>(mem, 0x6048) == 0x54321);
        CHECK(rd<std::uint64_t>(mem, 0x6050) == 0); // module cmdline_paddr
        // hvm_memmap_table_entry[2], 24 bytes each
        CHECK(rd<std::uint64_t>(mem, 0x7000) == 0);
        CHECK(rd<std::uint64_t>(mem, 0x7008) == 0x9fc00);
        CHECK(rd<std::uint32_t>(mem, 0x7010) == 1);
        CHECK(rd<std::uint32_t>(mem, 0x7014) == 0);
        CHECK(rd<std::uint64_t>(mem, 0x7018) == 1 * MiB);
        CHECK(rd<std::uint64_t>(mem, 0x7020) == 127 * MiB);
        CHECK(rd<std::uint32_t>(mem, 0x7028) == 1);
        // PVH enters without paging: no page tables are written.
        CHECK(rd<std::uint64_t>(mem, layout::PML4) == 0);
        // The command line is shared with Linux64.
        const auto cl = rd_bytes(mem, layout::CMDLINE, cmdline.size() + 1);
        CHECK(std::string(cl.begin(), cl.end() - 1) == cmdline);
        CHECK(cl.back() == 0);
        const auto gdt = boot_gdt(BootProtocol::Pvh);
        CHECK(rd<std::uint64_t>(mem, layout::BOOT_GDT + 8) == gdt[1]);
    }
    SECTION("without an initrd") {
        write_boot_info(mem, k, cmdline, std::nullopt);
        CHECK(rd<std::uint32_t>(mem, layout::PVH_INFO + 12) == 0);
        CHECK(rd<std::uint64_t>(mem, layout::PVH_INFO + 16) == 0);
        CHECK(rd<std::uint64_t>(mem, 0x6040) == 0);
    }
    SECTION("three memory map entries above 4 GiB") {
        auto big = layout::guest_memory(4 * GiB + 256 * MiB);
        write_boot_info(big, k, cmdline, std::nullopt);
        CHECK(rd<std::uint32_t>(big, layout::PVH_INFO + 48) == 3);
        CHECK(rd<std::uint64_t>(big, 0x7000 + 48) == 4 * GiB);
        CHECK(rd<std::uint64_t>(big, 0x7000 + 56) == 1 * GiB + 256 * MiB);
        CHECK(rd<std::uint32_t>(big, 0x7000 + 64) == 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Command line validation

TEST_CASE("command line longer than the kernel accepts is rejected") {
    auto mem = layout::guest_memory(128 * MiB);
    KernelImage k = elf_kernel(BootProtocol::Linux64);
    k.cmdline_max = 16;
    CHECK_NOTHROW(write_boot_info(mem, k, std::string(16, 'a'), std::nullopt));
    CHECK_CONFIG_ERROR(write_boot_info(mem, k, std::string(17, 'a'), std::nullopt), "at most 16");
    // Ember's own buffer (4096 bytes with the NUL) bounds kernels that claim more.
    k.cmdline_max = 0xffff'ffff;
    CHECK_NOTHROW(write_boot_info(mem, k, std::string(4095, 'b'), std::nullopt));
    CHECK_CONFIG_ERROR(write_boot_info(mem, k, std::string(4096, 'b'), std::nullopt), "at most 4095");
    // The default (a vmlinux without a setup header) is the kernel's COMMAND_LINE_SIZE - 1.
    k.cmdline_max = KernelImage{}.cmdline_max;
    CHECK_CONFIG_ERROR(write_boot_info(mem, k, std::string(2048, 'c'), std::nullopt), "2047");
    k.protocol = BootProtocol::Pvh;
    CHECK_CONFIG_ERROR(write_boot_info(mem, k, std::string(2048, 'c'), std::nullopt), "2047");
}

TEST_CASE("command line with a NUL byte is rejected") {
    auto mem = layout::guest_memory(128 * MiB);
    const KernelImage k = elf_kernel(BootProtocol::Linux64);
    CHECK_CONFIG_ERROR(write_boot_info(mem, k, std::string("console=ttyS0\0init=/bin/sh", 26), std::nullopt), "NUL");
}

// ---------------------------------------------------------------------------------------------
// GDT

TEST_CASE("Linux64 GDT: flat 64-bit code and flat data") {
    const auto gdt = boot_gdt(BootProtocol::Linux64);
    REQUIRE(gdt.size() == 4);
    CHECK(gdt[0] == 0);
    CHECK(segment_from_gdt(gdt[0], 0).unusable == 1);

    const kvm_segment cs = segment_from_gdt(gdt[1], 1);
    CHECK(cs.selector == 8);
    CHECK(cs.base == 0);
    CHECK(cs.limit == 0xffff'ffff);
    CHECK(cs.l == 1);
    CHECK(cs.db == 0); // D must be clear when L is set
    CHECK(cs.g == 1);
    CHECK(cs.present == 1);
    CHECK(cs.unusable == 0);
    CHECK(cs.s == 1);
    CHECK(cs.dpl == 0);
    CHECK(cs.type == 0xb); // execute/read, accessed

    const kvm_segment ds = segment_from_gdt(gdt[2], 2);
    CHECK(ds.selector == 16);
    CHECK(ds.limit == 0xffff'ffff);
    CHECK(ds.type == 0x3); // read/write, accessed
    CHECK(ds.db == 1);
    CHECK(ds.l == 0);
    CHECK(ds.present == 1);

    const kvm_segment tr = segment_from_gdt(gdt[3], 3);
    CHECK(tr.selector == 24);
    CHECK(tr.type == 0xb); // busy 64-bit TSS, which VM entry requires
    CHECK(tr.s == 0);
    CHECK(tr.present == 1);
}

TEST_CASE("PVH GDT: flat 32-bit code") {
    const auto gdt = boot_gdt(BootProtocol::Pvh);
    REQUIRE(gdt.size() == 4);
    const kvm_segment cs = segment_from_gdt(gdt[1], 1);
    CHECK(cs.selector == 8);
    CHECK(cs.base == 0);
    CHECK(cs.limit == 0xffff'ffff);
    CHECK(cs.db == 1);
    CHECK(cs.l == 0);
    CHECK(cs.type == 0xb);
    const kvm_segment ds = segment_from_gdt(gdt[2], 2);
    CHECK(ds.limit == 0xffff'ffff);
    CHECK(ds.db == 1);
    CHECK(ds.type == 0x3);
    const kvm_segment tr = segment_from_gdt(gdt[3], 3);
    CHECK(tr.type == 0xb);
    CHECK(tr.s == 0);
    CHECK(tr.limit == 0x67);
}

TEST_CASE("segment_from_gdt decodes every descriptor field") {
    // base 0x12345678, limit 0x54321 (byte granular), access 0xf3 (present, DPL 3, data RW
    // accessed), flags D/B and AVL.
    const std::uint64_t d = 0x1255'f334'5678'4321ull;
    const kvm_segment s = segment_from_gdt(d, 5);
    CHECK(s.base == 0x1234'5678);
    CHECK(s.limit == 0x54321);
    CHECK(s.g == 0);
    CHECK(s.db == 1);
    CHECK(s.avl == 1);
    CHECK(s.l == 0);
    CHECK(s.dpl == 3);
    CHECK(s.s == 1);
    CHECK(s.type == 3);
    CHECK(s.present == 1);
    CHECK(s.selector == 40);
    // Same with 4 KiB granularity: the limit scales and its low 12 bits read as ones.
    const kvm_segment g = segment_from_gdt(d | (1ull << 55), 1);
    CHECK(g.g == 1);
    CHECK(g.limit == 0x5432'1fff);
    // Not present: unusable.
    CHECK(segment_from_gdt(d & ~(1ull << 47), 1).unusable == 1);
}
