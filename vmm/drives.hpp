#pragma once
// Opening the images behind `drives` and what they add to the kernel command line. Runs before
// KVM is touched, so every bad drive is a one-line ConfigError even on a host without KVM.

#include "vmm/base/unique_fd.hpp"
#include "vmm/vm_config.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ember {

struct OpenedDrive {
    DriveConfig cfg;
    UniqueFd fd;
    std::uint64_t size = 0; // bytes; the guest sees size / 512 sectors
    std::uint64_t dev = 0, ino = 0;
};

// Opens one image: O_RDONLY for read-only drives and copy-on-write drives (cfg.cow, whose base
// must be this very file), else O_RDWR; O_CLOEXEC. Refuses anything but a regular file (or
// block device). A size that is not a multiple of 512 is logged
// as a warning (Firecracker's behaviour): the last partial sector is not visible to the guest.
OpenedDrive open_drive(const DriveConfig& cfg);

// Opens every drive, root drive first (it becomes /dev/vda), then the others in configuration
// order. Refuses duplicate ids, two root drives and one file behind two drives of which one
// writes it (a copy-on-write drive only reads its base).
std::vector<OpenedDrive> open_drives(const std::vector<DriveConfig>& drives);

// root=/dev/vda (or root=PARTUUID=...) and ro/rw for the root drive, if there is one.
std::string root_args(const std::vector<OpenedDrive>& drives);

// Adds `args` to a command line before the " -- " that starts init's arguments, if any.
std::string add_kernel_args(const std::string& cmdline, const std::string& args);

} // namespace ember
