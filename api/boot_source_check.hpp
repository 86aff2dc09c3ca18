#pragma once
// PUT /boot-source checks made when the request arrives, as Firecracker 1.16's BootConfig::new
// (vmm/src/vmm_config/boot_source.rs) makes them: the kernel and the initrd must open for
// reading, and boot_args must be a valid kernel command line. Loading and parsing the images
// still happens at InstanceStart.

#include "vmm/vm_config.hpp"

namespace ember {

// The longest boot_args Firecracker takes on x86_64 (arch::x86_64::layout::CMDLINE_MAX_SIZE,
// 2048 bytes including the terminating NUL).
inline constexpr std::size_t BOOT_ARGS_MAX = 2047;

// Throws ConfigError with Firecracker's wording ("The kernel file cannot be opened: ...",
// "The initrd file cannot be opened ...", "The kernel command line is invalid: ...").
void check_boot_source(const BootSourceConfig& b);

} // namespace ember
