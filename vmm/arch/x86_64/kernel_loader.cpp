#include "vmm/arch/x86_64/kernel_loader.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <cerrno>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <span>
#include <elf.h>
#include <unistd.h>
#include <vector>

namespace ember {
namespace {

constexpr std::uint32_t XEN_ELFNOTE_PHYS32_ENTRY = 18;

std::string hex(std::uint64_t v) {
    char b[24];
    std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
    return b;
}

// Reads exactly out.size() bytes at `off`, or throws: a short file is a truncated image.
void read_exact(int fd, std::uint64_t off, std::span<std::byte> out, const std::string& path, const char* what) {
    std::size_t done = 0;
    while (done < out.size()) {
        ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("kernel image " + path + ": reading " + what + ": " + std::strerror(errno));
        if (n == 0) throw ConfigError("kernel image " + path + " is truncated (" + what + ")");
        done += static_cast<std::size_t>(n);
    }
}

template <class T>
T read_struct(int fd, std::uint64_t off, const std::string& path, const char* what) {
    T v{};
    read_exact(fd, off, std::as_writable_bytes(std::span(&v, 1)), path, what);
    return v;
}

template <class T, std::size_t N>
T le(const std::array<std::uint8_t, N>& b, std::size_t off) {
    T v{};
    std::memcpy(&v, b.data() + off, sizeof v);
    return v;
}

std::optional<std::uint32_t> find_pvh_entry(int fd, std::uint64_t file_size, const Elf64_Phdr& ph,
                                            const std::string& path) {
    if (ph.p_filesz > 64 * 1024 || ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset)
        throw ConfigError("kernel image " + path + ": PT_NOTE segment lies outside the file");
    std::vector<std::byte> notes(static_cast<std::size_t>(ph.p_filesz));
    read_exact(fd, ph.p_offset, notes, path, "PT_NOTE");
    std::size_t pos = 0;
    auto align4 = [](std::size_t v) { return (v + 3) & ~std::size_t{3}; };
    while (notes.size() - pos >= sizeof(Elf64_Nhdr)) {
        Elf64_Nhdr nh{};
        std::memcpy(&nh, notes.data() + pos, sizeof nh);
        pos += sizeof nh;
        const std::size_t name_at = pos;
        if (nh.n_namesz > notes.size() - pos) break;
        pos = align4(pos + nh.n_namesz);
        if (pos > notes.size() || nh.n_descsz > notes.size() - pos) break;
        const std::size_t desc_at = pos;
        pos = align4(pos + nh.n_descsz);
        const bool xen = nh.n_namesz == 4 && std::memcmp(notes.data() + name_at, "Xen", 4) == 0;
        if (xen && nh.n_type == XEN_ELFNOTE_PHYS32_ENTRY) {
            if (nh.n_descsz < 4) throw ConfigError("kernel image " + path + ": PVH entry note is too short");
            std::uint64_t entry = 0;
            std::memcpy(&entry, notes.data() + desc_at, nh.n_descsz >= 8 ? 8 : 4);
            if (entry > UINT32_MAX)
                throw ConfigError("kernel image " + path + ": PVH entry point is above 4 GiB");
            return static_cast<std::uint32_t>(entry);
        }
        if (pos > notes.size()) break;
    }
    return std::nullopt;
}

KernelImage load_elf(int fd, std::uint64_t file_size, const std::string& path, const GuestMemory& mem) {
    const auto eh = read_struct<Elf64_Ehdr>(fd, 0, path, "ELF header");
    if (eh.e_ident[EI_CLASS] != ELFCLASS64) throw ConfigError("kernel image " + path + ": not a 64-bit ELF");
    if (eh.e_ident[EI_DATA] != ELFDATA2LSB) throw ConfigError("kernel image " + path + ": not little-endian");
    if (eh.e_machine != EM_X86_64) throw ConfigError("kernel image " + path + ": ELF machine is not x86_64");
    if (eh.e_type != ET_EXEC) throw ConfigError("kernel image " + path + ": ELF is not an executable");
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 64)
        throw ConfigError("kernel image " + path + ": bad ELF program header table");
    const std::uint64_t ph_bytes = std::uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr);
    if (eh.e_phoff > file_size || ph_bytes > file_size - eh.e_phoff)
        throw ConfigError("kernel image " + path + " is truncated (program headers)");

    KernelImage k;
    k.protocol = BootProtocol::Linux64;
    std::uint64_t end = 0;
    bool loaded = false;
    for (unsigned i = 0; i < eh.e_phnum; ++i) {
        const auto ph = read_struct<Elf64_Phdr>(fd, eh.e_phoff + i * sizeof(Elf64_Phdr), path, "program header");
        if (ph.p_type == PT_NOTE) {
            if (auto e = find_pvh_entry(fd, file_size, ph, path)) {
                k.protocol = BootProtocol::Pvh;
                k.entry = GuestAddr(*e);
            }
            continue;
        }
        if (ph.p_type != PT_LOAD) continue;
        if (ph.p_filesz > ph.p_memsz)
            throw ConfigError("kernel image " + path + ": segment " + std::to_string(i) + " has more file bytes than memory bytes");
        if (ph.p_offset > file_size || ph.p_filesz > file_size - ph.p_offset)
            throw ConfigError("kernel image " + path + ": segment " + std::to_string(i) + " lies outside the file");
        if (ph.p_paddr < layout::HIMEM_START)
            throw ConfigError("kernel image " + path + ": segment " + std::to_string(i) + " loads below 1 MiB at " +
                              hex(ph.p_paddr));
        auto dst = mem.slice(GuestAddr(ph.p_paddr), ph.p_memsz);
        if (!dst)
            throw ConfigError("kernel image " + path + ": segment " + std::to_string(i) + " [" + hex(ph.p_paddr) +
                              ", +" + hex(ph.p_memsz) + ") does not fit in guest RAM");
        read_exact(fd, ph.p_offset, dst->first(static_cast<std::size_t>(ph.p_filesz)), path, "segment");
        std::memset(dst->data() + ph.p_filesz, 0, static_cast<std::size_t>(ph.p_memsz - ph.p_filesz));
        end = std::max(end, ph.p_paddr + ph.p_memsz);
        loaded = true;
    }
    if (!loaded) throw ConfigError("kernel image " + path + ": ELF has no loadable segment");
    if (k.protocol == BootProtocol::Linux64) {
        // vmlinux's e_entry is physical (ENTRY(phys_startup_64) in vmlinux.lds).
        if (!mem.slice(GuestAddr(eh.e_entry), 1))
            throw ConfigError("kernel image " + path + ": entry point " + hex(eh.e_entry) + " is outside guest RAM");
        k.entry = GuestAddr(eh.e_entry);
    } else if (!mem.slice(k.entry, 1)) {
        throw ConfigError("kernel image " + path + ": PVH entry point " + hex(k.entry.raw()) + " is outside guest RAM");
    }
    k.end = GuestAddr(end);
    return k;
}

KernelImage load_bzimage(int fd, std::uint64_t file_size, const std::string& path, const GuestMemory& mem) {
    if (file_size < 1024) throw ConfigError("kernel image " + path + " is too small to be a bzImage");
    std::array<std::uint8_t, 1024> s{};
    read_exact(fd, 0, std::as_writable_bytes(std::span(s)), path, "setup header");
    if (le<std::uint16_t>(s, bzhdr::BOOT_FLAG) != 0xaa55 || le<std::uint32_t>(s, bzhdr::HEADER) != bzhdr::MAGIC_HDRS)
        throw ConfigError("kernel image " + path + " is neither an ELF vmlinux nor a bzImage (no \"HdrS\" header)");
    const auto version = le<std::uint16_t>(s, bzhdr::VERSION);
    if (version < bzhdr::MIN_VERSION)
        throw ConfigError("kernel image " + path + ": boot protocol " + std::to_string(version >> 8) + "." +
                          std::to_string(version & 0xff) + " is older than 2.12");
    if (!(le<std::uint8_t>(s, bzhdr::LOADFLAGS) & bzhdr::LOADED_HIGH))
        throw ConfigError("kernel image " + path + ": not a bzImage (LOADED_HIGH clear)");
    if (!(le<std::uint16_t>(s, bzhdr::XLOADFLAGS) & bzhdr::XLF_KERNEL_64))
        throw ConfigError("kernel image " + path + ": has no 64-bit entry point (XLF_KERNEL_64 clear)");
    unsigned setup_sects = s[bzhdr::SETUP_SECTS];
    if (setup_sects == 0) setup_sects = 4;
    const std::uint64_t payload_off = (std::uint64_t{setup_sects} + 1) * 512;
    if (payload_off >= file_size) throw ConfigError("kernel image " + path + " is truncated (no protected-mode kernel)");
    const std::uint64_t payload = file_size - payload_off;
    const std::uint64_t init_size = le<std::uint32_t>(s, bzhdr::INIT_SIZE);
    const std::uint64_t footprint = std::max(payload, init_size);
    auto dst = mem.slice(GuestAddr(layout::HIMEM_START), footprint);
    if (!dst)
        throw ConfigError("kernel image " + path + ": needs " + std::to_string(footprint >> 20) +
                          " MiB from 1 MiB, more than guest RAM holds");
    read_exact(fd, payload_off, dst->first(static_cast<std::size_t>(payload)), path, "protected-mode kernel");

    KernelImage k;
    k.protocol = BootProtocol::Linux64;
    k.entry = GuestAddr(layout::HIMEM_START + 0x200); // boot.rst: 64-bit entry = load address + 0x200
    k.end = GuestAddr(layout::HIMEM_START + footprint);
    k.setup_sector = s;
    k.initrd_addr_max = le<std::uint32_t>(s, bzhdr::INITRD_ADDR_MAX);
    k.cmdline_max = le<std::uint32_t>(s, bzhdr::CMDLINE_SIZE);
    return k;
}

} // namespace

KernelImage load_kernel(int fd, std::uint64_t file_size, const std::string& path, const GuestMemory& mem) {
    std::array<unsigned char, 4> magic{};
    if (file_size < magic.size()) throw ConfigError("kernel image " + path + " is too small to be a kernel");
    read_exact(fd, 0, std::as_writable_bytes(std::span(magic)), path, "magic");
    if (std::memcmp(magic.data(), ELFMAG, SELFMAG) == 0) return load_elf(fd, file_size, path, mem);
    return load_bzimage(fd, file_size, path, mem);
}

} // namespace ember
