#pragma once
// Loads a guest kernel into guest RAM: an ELF vmlinux (entered through PVH when it carries the
// XEN_ELFNOTE_PHYS32_ENTRY note, else through the Linux 64-bit boot protocol at e_entry) or a
// bzImage (Documentation/x86/boot.rst, 64-bit boot protocol). Every field taken from the image
// is validated; a malformed image raises ConfigError and leaves no vCPU running.

#include "vmm/base/guest_addr.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>

namespace ember {

class GuestMemory;

enum class BootProtocol { Pvh, Linux64 };

struct KernelImage {
    BootProtocol protocol = BootProtocol::Linux64;
    GuestAddr entry;               // PVH: 32-bit entry; Linux64: 64-bit entry point
    GuestAddr end;                 // one past the highest byte the kernel occupies (incl. init_size)
    // bzImage only: sector 0 of the image, whose setup header seeds the zero page (boot.rst §"the
    // real-mode kernel header").
    std::optional<std::array<std::uint8_t, 1024>> setup_sector;
    std::uint32_t initrd_addr_max = 0xffff'ffff; // highest address the initrd may occupy
    std::uint32_t cmdline_max = 2047;            // longest command line the kernel accepts (no NUL)
};

// Setup-header offsets inside boot_params / sector 0 (boot.rst).
namespace bzhdr {
inline constexpr std::size_t SETUP_SECTS = 0x1f1;
inline constexpr std::size_t BOOT_FLAG = 0x1fe;
inline constexpr std::size_t JUMP = 0x200;       // 2-byte jump; byte 0x201 = header length - 0x202
inline constexpr std::size_t HEADER = 0x202;     // "HdrS"
inline constexpr std::size_t VERSION = 0x206;
inline constexpr std::size_t TYPE_OF_LOADER = 0x210;
inline constexpr std::size_t LOADFLAGS = 0x211;
inline constexpr std::size_t RAMDISK_IMAGE = 0x218;
inline constexpr std::size_t RAMDISK_SIZE = 0x21c;
inline constexpr std::size_t CMD_LINE_PTR = 0x228;
inline constexpr std::size_t INITRD_ADDR_MAX = 0x22c;
inline constexpr std::size_t KERNEL_ALIGNMENT = 0x230;
inline constexpr std::size_t RELOCATABLE = 0x234;
inline constexpr std::size_t XLOADFLAGS = 0x236;
inline constexpr std::size_t CMDLINE_SIZE = 0x238;
inline constexpr std::size_t PREF_ADDRESS = 0x258;
inline constexpr std::size_t INIT_SIZE = 0x260;
inline constexpr std::uint32_t MAGIC_HDRS = 0x53726448; // "HdrS"
inline constexpr std::uint8_t LOADED_HIGH = 0x01;
inline constexpr std::uint16_t XLF_KERNEL_64 = 0x01;
inline constexpr std::uint16_t MIN_VERSION = 0x020c;    // 2.12: xloadflags and 64-bit entry
} // namespace bzhdr

// Reads the image from `fd` (size `file_size`, named `path` in errors) into `mem`.
KernelImage load_kernel(int fd, std::uint64_t file_size, const std::string& path, const GuestMemory& mem);

} // namespace ember
