// load_kernel() on synthetic ELF vmlinux and bzImage files passed through memfds.

#include "test_util.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/kernel_loader.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <elf.h>
#include <vector>

using namespace ember;
using ember::layout::MiB;
using ember::test::MemFile;
using ember::test::put;

namespace {

constexpr std::uint64_t LOAD_ADDR = 0x100000;
constexpr std::uint64_t SEG_OFFSET = 0x200;  // file offset of the PT_LOAD bytes
constexpr std::uint64_t SEG_FILESZ = 0x180;
constexpr std::uint64_t SEG_MEMSZ = 0x3000;  // the rest is bss
constexpr std::uint64_t NOTE_OFFSET = 0x400; // file offset of the PT_NOTE bytes
constexpr std::uint64_t ENTRY = 0x100040;

std::uint8_t pattern(std::size_t i) { return static_cast<std::uint8_t>((i * 7 + 3) & 0xff); }

// An ELF64 x86_64 executable with one PT_LOAD at 1 MiB; tests tweak the headers before bytes().
struct ElfImage {
    Elf64_Ehdr eh{};
    std::vector<Elf64_Phdr> phdrs;
    std::vector<std::uint8_t> notes;  // written at NOTE_OFFSET when non-empty
    std::uint64_t min_size = SEG_OFFSET + SEG_FILESZ;

    ElfImage() {
        std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
        eh.e_ident[EI_CLASS] = ELFCLASS64;
        eh.e_ident[EI_DATA] = ELFDATA2LSB;
        eh.e_ident[EI_VERSION] = EV_CURRENT;
        eh.e_type = ET_EXEC;
        eh.e_machine = EM_X86_64;
        eh.e_version = EV_CURRENT;
        eh.e_entry = ENTRY;
        eh.e_phoff = sizeof(Elf64_Ehdr);
        eh.e_ehsize = sizeof(Elf64_Ehdr);
        eh.e_phentsize = sizeof(Elf64_Phdr);
        Elf64_Phdr load{};
        load.p_type = PT_LOAD;
        load.p_flags = PF_R | PF_X;
        load.p_offset = SEG_OFFSET;
        load.p_vaddr = 0xffffffff81000000ull; // vmlinux links high and loads at p_paddr
        load.p_paddr = LOAD_ADDR;
        load.p_filesz = SEG_FILESZ;
        load.p_memsz = SEG_MEMSZ;
        load.p_align = 0x1000;
        phdrs.push_back(load);
    }

    // Adds a PT_NOTE segment covering `notes`.
    void add_note_segment() {
        Elf64_Phdr n{};
        n.p_type = PT_NOTE;
        n.p_offset = NOTE_OFFSET;
        n.p_filesz = notes.size();
        n.p_memsz = notes.size();
        n.p_align = 4;
        phdrs.push_back(n);
    }

    std::vector<std::uint8_t> bytes() {
        eh.e_phnum = static_cast<Elf64_Half>(phdrs.size());
        return raw();
    }
    // As bytes() but keeps eh.e_phnum as the test set it.
    std::vector<std::uint8_t> raw() const {
        std::vector<std::uint8_t> b(static_cast<std::size_t>(min_size), 0);
        std::memcpy(b.data(), &eh, sizeof eh);
        for (std::size_t i = 0; i < phdrs.size(); ++i) {
            const std::uint64_t at = eh.e_phoff + i * sizeof(Elf64_Phdr); // may wrap: checked below
            if (at <= b.size() && sizeof(Elf64_Phdr) <= b.size() - at) std::memcpy(b.data() + at, &phdrs[i], sizeof(Elf64_Phdr));
        }
        for (std::size_t i = 0; i < SEG_FILESZ && SEG_OFFSET + i < b.size(); ++i) b[SEG_OFFSET + i] = pattern(i);
        if (!notes.empty()) {
            if (b.size() < NOTE_OFFSET + notes.size()) b.resize(NOTE_OFFSET + notes.size(), 0);
            std::memcpy(b.data() + NOTE_OFFSET, notes.data(), notes.size());
        }
        return b;
    }
};

// Appends one ELF note (name NUL-terminated, name and desc padded to 4 bytes).
void add_note(std::vector<std::uint8_t>& n, const char* name, std::uint32_t type, const std::vector<std::uint8_t>& desc) {
    const auto namesz = static_cast<std::uint32_t>(std::strlen(name) + 1);
    Elf64_Nhdr h{};
    h.n_namesz = namesz;
    h.n_descsz = static_cast<std::uint32_t>(desc.size());
    h.n_type = type;
    const auto* hb = reinterpret_cast<const std::uint8_t*>(&h);
    n.insert(n.end(), hb, hb + sizeof h);
    n.insert(n.end(), name, name + namesz);
    while (n.size() % 4) n.push_back(0);
    n.insert(n.end(), desc.begin(), desc.end());
    while (n.size() % 4) n.push_back(0);
}

template <class T>
std::vector<std::uint8_t> le_bytes(T v) {
    std::vector<std::uint8_t> b(sizeof v);
    std::memcpy(b.data(), &v, sizeof v);
    return b;
}

constexpr std::uint32_t XEN_ELFNOTE_PHYS32_ENTRY = 18;

KernelImage load(const std::vector<std::uint8_t>& image, const GuestMemory& mem) {
    MemFile f(image);
    return load_kernel(f.fd(), f.size(), "test-kernel", mem);
}

std::vector<std::uint8_t> guest_bytes(const GuestMemory& mem, std::uint64_t addr, std::size_t len) {
    std::vector<std::uint8_t> out(len);
    REQUIRE(mem.read(GuestAddr(addr), std::as_writable_bytes(std::span(out))));
    return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// ELF vmlinux

TEST_CASE("ELF: a PT_LOAD segment is copied to p_paddr, its bss zeroed, Linux64 entered at e_entry") {
    auto mem = layout::guest_memory(16 * MiB);
    // Dirty the bss area and the bytes around the segment first: the loader must zero the
    // bss itself and must not write past p_memsz.
    std::vector<std::uint8_t> junk(SEG_MEMSZ + 0x100, 0xcc);
    REQUIRE(mem.write(GuestAddr(LOAD_ADDR), std::as_bytes(std::span(junk))));

    ElfImage elf;
    const KernelImage k = load(elf.bytes(), mem);

    CHECK(k.protocol == BootProtocol::Linux64);
    CHECK(k.entry.raw() == ENTRY);
    CHECK(k.end.raw() == LOAD_ADDR + SEG_MEMSZ);
    CHECK_FALSE(k.setup_sector.has_value());

    const auto seg = guest_bytes(mem, LOAD_ADDR, SEG_FILESZ);
    bool same = true;
    for (std::size_t i = 0; i < SEG_FILESZ; ++i) same = same && seg[i] == pattern(i);
    CHECK(same);
    const auto bss = guest_bytes(mem, LOAD_ADDR + SEG_FILESZ, SEG_MEMSZ - SEG_FILESZ);
    CHECK(std::all_of(bss.begin(), bss.end(), [](std::uint8_t b) { return b == 0; }));
    const auto after = guest_bytes(mem, LOAD_ADDR + SEG_MEMSZ, 0x100);
    CHECK(std::all_of(after.begin(), after.end(), [](std::uint8_t b) { return b == 0xcc; }));
}

TEST_CASE("ELF: two PT_LOAD segments load independently and end covers the highest") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;
    Elf64_Phdr second = elf.phdrs[0];
    second.p_paddr = 0x400000;
    second.p_offset = SEG_OFFSET + 0x80; // a different part of the file
    second.p_filesz = 0x40;
    second.p_memsz = 0x1000;
    elf.phdrs.push_back(second);
    const KernelImage k = load(elf.bytes(), mem);
    CHECK(k.end.raw() == 0x400000 + 0x1000);
    const auto b = guest_bytes(mem, 0x400000, 0x40);
    CHECK(b[0] == pattern(0x80));
    CHECK(b[0x3f] == pattern(0x80 + 0x3f));
}

TEST_CASE("ELF: 64 program headers are accepted (the rest PT_NULL)") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;
    elf.eh.e_phnum = 64;
    elf.eh.e_phoff = 0x1000; // clear of the segment bytes; all but the first are zero (PT_NULL)
    elf.min_size = 0x1000 + 64 * sizeof(Elf64_Phdr);
    const KernelImage k = load(elf.raw(), mem);
    CHECK(k.end.raw() == LOAD_ADDR + SEG_MEMSZ);
    CHECK(guest_bytes(mem, LOAD_ADDR, 1)[0] == pattern(0));
}

TEST_CASE("ELF: the Xen PHYS32_ENTRY note selects PVH and its entry point") {
    auto mem = layout::guest_memory(16 * MiB);
    constexpr std::uint32_t PVH_ENTRY = 0x1000c0;
    ElfImage elf;
    // An unrelated note first: the loader must walk past it.
    add_note(elf.notes, "GNU", 3, std::vector<std::uint8_t>(20, 0xab));
    // And a Xen note of another type (XEN_ELFNOTE_ENTRY = 1), which is not the PVH entry.
    add_note(elf.notes, "Xen", 1, le_bytes<std::uint64_t>(0xffffffff81000000ull));

    const int desc_bytes = GENERATE(4, 8);
    CAPTURE(desc_bytes);
    if (desc_bytes == 4) add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint32_t>(PVH_ENTRY));
    else add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint64_t>(PVH_ENTRY));
    elf.add_note_segment();

    const KernelImage k = load(elf.bytes(), mem);
    CHECK(k.protocol == BootProtocol::Pvh);
    CHECK(k.entry.raw() == PVH_ENTRY);
    CHECK(k.entry.raw() != ENTRY);
    CHECK(k.end.raw() == LOAD_ADDR + SEG_MEMSZ);
    // The PT_LOAD segment is still loaded.
    CHECK(guest_bytes(mem, LOAD_ADDR, 1)[0] == pattern(0));
}

TEST_CASE("ELF: a PT_NOTE segment without the PVH note keeps the Linux 64-bit protocol") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;
    add_note(elf.notes, "GNU", 3, std::vector<std::uint8_t>(20, 0x11));
    // Right type, wrong owner: only "Xen" notes count.
    add_note(elf.notes, "Xem", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint32_t>(0x100080));
    elf.add_note_segment();
    const KernelImage k = load(elf.bytes(), mem);
    CHECK(k.protocol == BootProtocol::Linux64);
    CHECK(k.entry.raw() == ENTRY);
}

TEST_CASE("ELF: PVH note problems are rejected") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;
    SECTION("entry point outside guest RAM") {
        add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint32_t>(0x4000'0000));
        elf.add_note_segment();
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "PVH entry point");
    }
    SECTION("8-byte entry above 4 GiB") {
        add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint64_t>(0x1'0010'0000ull));
        elf.add_note_segment();
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "above 4 GiB");
    }
    SECTION("descriptor shorter than 4 bytes") {
        add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, {0x00, 0x10});
        elf.add_note_segment();
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "too short");
    }
    SECTION("PT_NOTE beyond the end of the file") {
        add_note(elf.notes, "Xen", XEN_ELFNOTE_PHYS32_ENTRY, le_bytes<std::uint32_t>(0x100080));
        elf.add_note_segment();
        elf.phdrs.back().p_filesz += 0x1000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "PT_NOTE");
    }
}

TEST_CASE("ELF: a truncated note table ends the search without reading past it") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;
    // A note header whose name claims more bytes than the segment holds.
    Elf64_Nhdr h{};
    h.n_namesz = 0x1000;
    h.n_descsz = 4;
    h.n_type = XEN_ELFNOTE_PHYS32_ENTRY;
    elf.notes.resize(sizeof h + 8, 0);
    std::memcpy(elf.notes.data(), &h, sizeof h);
    elf.add_note_segment();
    const KernelImage k = load(elf.bytes(), mem);
    CHECK(k.protocol == BootProtocol::Linux64);
}

TEST_CASE("ELF: malformed images are rejected with ConfigError") {
    auto mem = layout::guest_memory(16 * MiB);
    ElfImage elf;

    SECTION("truncated ELF header") {
        auto b = elf.bytes();
        b.resize(40);
        CHECK_CONFIG_ERROR(load(b, mem), "truncated");
    }
    SECTION("ELFCLASS32") {
        elf.eh.e_ident[EI_CLASS] = ELFCLASS32;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "64-bit");
    }
    SECTION("big-endian") {
        elf.eh.e_ident[EI_DATA] = ELFDATA2MSB;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "little-endian");
    }
    SECTION("wrong e_machine") {
        elf.eh.e_machine = EM_AARCH64;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "x86_64");
    }
    SECTION("not an executable") {
        elf.eh.e_type = ET_DYN;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "executable");
    }
    SECTION("wrong program header entry size") {
        elf.eh.e_phentsize = sizeof(Elf64_Phdr) - 8;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "program header");
    }
    SECTION("phoff beyond the file") {
        elf.eh.e_phoff = 0x10000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "program headers");
    }
    SECTION("program header table crossing the end of the file") {
        elf.eh.e_phoff = elf.min_size - sizeof(Elf64_Phdr) / 2;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "program headers");
    }
    SECTION("phoff near 2^64 (no wrap-around)") {
        elf.eh.e_phoff = UINT64_MAX - 8;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "program headers");
    }
    SECTION("p_offset + p_filesz beyond the file") {
        elf.phdrs[0].p_filesz = elf.min_size; // starts at SEG_OFFSET, so ends past the file
        elf.phdrs[0].p_memsz = 0x10000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "segment 0");
    }
    SECTION("p_offset beyond the file") {
        elf.phdrs[0].p_offset = 0x100000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "segment 0");
    }
    SECTION("p_offset near 2^64 (no wrap-around)") {
        elf.phdrs[0].p_offset = UINT64_MAX - 0x10;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "segment 0");
    }
    SECTION("p_filesz > p_memsz") {
        elf.phdrs[0].p_memsz = SEG_FILESZ - 1;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "segment 0");
    }
    SECTION("segment beyond guest RAM") {
        elf.phdrs[0].p_paddr = 16 * MiB - 0x1000; // memsz 0x3000 crosses the end of RAM
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "does not fit in guest RAM");
    }
    SECTION("segment wrapping around 2^64") {
        elf.phdrs[0].p_paddr = UINT64_MAX - 0xfff;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "does not fit in guest RAM");
    }
    SECTION("segment below 1 MiB") {
        elf.phdrs[0].p_paddr = 0x80000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "below 1 MiB");
    }
    SECTION("second segment is the bad one") {
        Elf64_Phdr low = elf.phdrs[0];
        low.p_paddr = 0x7000; // would overwrite the zero page
        elf.phdrs.push_back(low);
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "segment 1");
    }
    SECTION("no PT_LOAD") {
        elf.phdrs[0].p_type = PT_PHDR;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "no loadable segment");
    }
    SECTION("entry outside RAM") {
        elf.eh.e_entry = 0x4000'0000;
        CHECK_CONFIG_ERROR(load(elf.bytes(), mem), "entry point");
    }
    SECTION("absurd e_phnum") {
        elf.eh.e_phnum = 0xffff;
        elf.min_size = 0x10000 * sizeof(Elf64_Phdr); // even with a file big enough to hold them
        CHECK_CONFIG_ERROR(load(elf.raw(), mem), "program header table");
    }
    SECTION("e_phnum one above the limit of 64") {
        elf.eh.e_phnum = 65;
        elf.eh.e_phoff = 0x1000;
        elf.min_size = 0x1000 + 65 * sizeof(Elf64_Phdr);
        CHECK_CONFIG_ERROR(load(elf.raw(), mem), "program header table");
    }
    SECTION("e_phnum == 0") {
        elf.eh.e_phnum = 0;
        CHECK_CONFIG_ERROR(load(elf.raw(), mem), "program header table");
    }
}

// ---------------------------------------------------------------------------------------------
// bzImage

namespace {

struct BzImage {
    std::uint8_t setup_sects = 1;
    std::uint16_t boot_flag = 0xaa55;
    std::uint32_t magic = bzhdr::MAGIC_HDRS;
    std::uint16_t version = 0x020f;
    std::uint8_t loadflags = bzhdr::LOADED_HIGH;
    std::uint16_t xloadflags = bzhdr::XLF_KERNEL_64 | 0x02; // XLF_CAN_BE_LOADED_ABOVE_4G too
    std::uint32_t init_size = 0x4000;
    std::uint32_t initrd_addr_max = 0x37ff'ffff;
    std::uint32_t cmdline_size = 255; // differs from KernelImage's default (2047)
    std::size_t payload = 0x1800;

    std::size_t setup_bytes() const { return (std::size_t{setup_sects == 0 ? 4u : setup_sects} + 1) * 512; }
    static std::uint8_t payload_byte(std::size_t i) { return static_cast<std::uint8_t>((i * 13 + 5) & 0xff); }

    std::vector<std::uint8_t> bytes() const {
        std::vector<std::uint8_t> b(std::max<std::size_t>(setup_bytes(), 1024), 0);
        b[bzhdr::SETUP_SECTS] = setup_sects;
        put(b, bzhdr::BOOT_FLAG, boot_flag);
        b[bzhdr::JUMP] = 0xeb;
        b[bzhdr::JUMP + 1] = 0x66; // header ends at 0x268
        put(b, bzhdr::HEADER, magic);
        put(b, bzhdr::VERSION, version);
        b[bzhdr::LOADFLAGS] = loadflags;
        put(b, bzhdr::INITRD_ADDR_MAX, initrd_addr_max);
        put(b, bzhdr::XLOADFLAGS, xloadflags);
        put(b, bzhdr::CMDLINE_SIZE, cmdline_size);
        put(b, bzhdr::INIT_SIZE, init_size);
        b[0x3ff] = 0x5a; // last byte of the 1024 the loader keeps
        b.resize(setup_bytes());
        for (std::size_t i = 0; i < payload; ++i) b.push_back(payload_byte(i));
        return b;
    }
};

} // namespace

TEST_CASE("bzImage: the protected-mode kernel lands at 1 MiB, 64-bit entry at +0x200") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    const auto image = bz.bytes();
    const KernelImage k = load(image, mem);

    CHECK(k.protocol == BootProtocol::Linux64);
    CHECK(k.entry.raw() == 0x100200);
    CHECK(k.end.raw() == LOAD_ADDR + std::max<std::uint64_t>(bz.payload, bz.init_size));
    CHECK(k.initrd_addr_max == 0x37ff'ffff);
    CHECK(k.cmdline_max == 255);

    REQUIRE(k.setup_sector.has_value());
    CHECK(std::equal(k.setup_sector->begin(), k.setup_sector->end(), image.begin()));
    CHECK((*k.setup_sector)[0x3ff] == 0x5a);
    CHECK((*k.setup_sector)[bzhdr::SETUP_SECTS] == 1);

    const auto loaded = guest_bytes(mem, LOAD_ADDR, bz.payload);
    CHECK(std::equal(loaded.begin(), loaded.end(), image.begin() + static_cast<std::ptrdiff_t>(bz.setup_bytes())));
    // Nothing of the setup code lands at 1 MiB.
    CHECK(loaded[0] == BzImage::payload_byte(0));
}

TEST_CASE("bzImage: end covers the payload when it is bigger than init_size") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    bz.init_size = 0x100;
    const KernelImage k = load(bz.bytes(), mem);
    CHECK(k.end.raw() == LOAD_ADDR + bz.payload);
}

TEST_CASE("bzImage: setup_sects == 0 means 4 setup sectors") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    bz.setup_sects = 0;
    const auto image = bz.bytes();
    REQUIRE(image.size() == 5 * 512 + bz.payload);
    const KernelImage k = load(image, mem);
    const auto loaded = guest_bytes(mem, LOAD_ADDR, 16);
    CHECK(std::equal(loaded.begin(), loaded.end(), image.begin() + 5 * 512));
    CHECK(k.entry.raw() == 0x100200);
}

TEST_CASE("bzImage: a larger setup area is skipped entirely") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    bz.setup_sects = 7;
    const auto image = bz.bytes();
    load(image, mem);
    CHECK(guest_bytes(mem, LOAD_ADDR, 1)[0] == BzImage::payload_byte(0));
    CHECK(guest_bytes(mem, LOAD_ADDR + 100, 1)[0] == BzImage::payload_byte(100));
}

TEST_CASE("bzImage: invalid images are rejected with ConfigError") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    SECTION("missing HdrS") {
        bz.magic = 0x12345678;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "neither an ELF");
    }
    SECTION("missing boot flag") {
        bz.boot_flag = 0;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "neither an ELF");
    }
    SECTION("boot protocol 2.11") {
        bz.version = 0x020b;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "2.11");
    }
    SECTION("no XLF_KERNEL_64") {
        bz.xloadflags = 0x02;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "XLF_KERNEL_64");
    }
    SECTION("no LOADED_HIGH (a zImage)") {
        bz.loadflags = 0x80;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "LOADED_HIGH");
    }
    SECTION("payload missing") {
        bz.payload = 0;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "no protected-mode kernel");
    }
    SECTION("setup sectors beyond the end of the file") {
        bz.setup_sects = 200;
        auto b = bz.bytes();
        b.resize(4096);
        CHECK_CONFIG_ERROR(load(b, mem), "no protected-mode kernel");
    }
    SECTION("init_size larger than RAM") {
        bz.init_size = 32 * MiB;
        CHECK_CONFIG_ERROR(load(bz.bytes(), mem), "more than guest RAM");
    }
    SECTION("payload larger than RAM") {
        auto small = layout::guest_memory(2 * MiB);
        bz.payload = 1 * MiB + 1;
        CHECK_CONFIG_ERROR(load(bz.bytes(), small), "more than guest RAM");
    }
}

TEST_CASE("files too small to be a kernel are rejected") {
    auto mem = layout::guest_memory(16 * MiB);
    CHECK_CONFIG_ERROR(load({}, mem), "too small");
    CHECK_CONFIG_ERROR(load({0x7f, 'E', 'L'}, mem), "too small");
    // Four bytes of ELF magic and nothing else: a truncated ELF header.
    CHECK_CONFIG_ERROR(load({0x7f, 'E', 'L', 'F'}, mem), "truncated");
    // Not ELF and shorter than a setup sector.
    CHECK_CONFIG_ERROR(load(std::vector<std::uint8_t>(600, 0x90), mem), "too small to be a bzImage");
}

TEST_CASE("a size larger than the file is reported as truncation, not read past the end") {
    auto mem = layout::guest_memory(16 * MiB);
    BzImage bz;
    const auto image = bz.bytes();
    MemFile f(image);
    CHECK_CONFIG_ERROR(load_kernel(f.fd(), f.size() + 4096, "test-kernel", mem), "truncated");
}
