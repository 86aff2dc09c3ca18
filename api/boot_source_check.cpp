#include "api/boot_source_check.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/unique_fd.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <string>

namespace ember {
namespace {

// Opens `path` for reading and closes it again; "" on success, else strerror. O_NONBLOCK: a
// named pipe given as a kernel must not block the VMM thread here (it fails at InstanceStart).
std::string open_error(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    return fd.valid() ? std::string() : std::string(std::strerror(errno));
}

} // namespace

void check_boot_source(const BootSourceConfig& b) {
    if (std::string e = open_error(b.kernel_image_path); !e.empty())
        throw ConfigError("The kernel file cannot be opened: " + b.kernel_image_path + ": " + e);
    if (b.initrd_path)
        if (std::string e = open_error(*b.initrd_path); !e.empty())
            throw ConfigError("The initrd file cannot be opened due to invalid path or invalid permissions. " + *b.initrd_path +
                              ": " + e);
    if (!b.boot_args) return;
    // Firecracker's Cmdline (linux-loader) takes printable ASCII only, and at most CMDLINE_MAX_SIZE - 1 bytes.
    if (b.boot_args->size() > BOOT_ARGS_MAX)
        throw ConfigError("The kernel command line is invalid: it is " + std::to_string(b.boot_args->size()) +
                          " bytes, more than " + std::to_string(BOOT_ARGS_MAX));
    for (std::size_t i = 0; i < b.boot_args->size(); ++i) {
        const auto ch = static_cast<unsigned char>((*b.boot_args)[i]);
        if (ch < 0x20 || ch > 0x7e) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "0x%02x", ch);
            throw ConfigError("The kernel command line is invalid: byte " + std::to_string(i) + " (" + hex + ") is not printable ASCII");
        }
    }
}

} // namespace ember
