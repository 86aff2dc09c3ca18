#pragma once
// The VM's configuration as plain values, independent of JSON: api/config parses Firecracker's
// schema into these and renders them back for GET /vm/config.

#include <cstdint>
#include <optional>
#include <string>

namespace ember {

// Firecracker's default when boot_args is not given (vmm/src/vmm_config/boot_source.rs).
inline constexpr const char* DEFAULT_BOOT_ARGS =
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

inline constexpr unsigned MAX_VCPUS = 32;

struct BootSourceConfig {
    std::string kernel_image_path;
    std::optional<std::string> initrd_path;
    std::optional<std::string> boot_args;
};

struct MachineConfig {
    unsigned vcpu_count = 1;
    std::uint64_t mem_size_mib = 128;
    bool smt = false;
    bool track_dirty_pages = false;
    std::string huge_pages = "None";
};

struct VmConfig {
    std::optional<BootSourceConfig> boot_source;
    MachineConfig machine;
};

struct RunOptions {
    bool boot_timer = false;
    std::string kvm_path = "/dev/kvm";
};

} // namespace ember
