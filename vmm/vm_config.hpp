#pragma once
// The VM's configuration as plain values, independent of JSON: api/config parses Firecracker's
// schema into these and renders them back for GET /vm/config.

#include "devices/virtio/balloon/config.hpp"
#include "devices/virtio/vsock/config.hpp"
#include "devices/virtio/block/config.hpp"
#include "devices/virtio/net/config.hpp"
#include "devices/virtio/rng/config.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

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
    // machine-config.cpu_template or PUT /cpu-config, whichever came last (Firecracker keeps both
    // in MachineConfig::cpu_template).
    CpuTemplateChoice cpu_template;
};

// Which device carries the guest's interactive console (host stdin goes there). The 16550 UART
// (ttyS0) exists either way; Ember's "console" section adds virtio-console (hvc0) with `Virtio`.
enum class ConsoleDevice { Serial, Virtio };

// Where guest console output goes: stdout, or Firecracker's serial_out_path. Both the UART and
// virtio-console write there.
struct ConsoleConfig {
    ConsoleDevice device = ConsoleDevice::Serial;
    std::optional<std::string> serial_out_path;
    std::optional<TokenBucketConfig> serial_rate_limiter; // Firecracker's serial.rate_limiter (limits())
};

struct VmConfig {
    std::optional<BootSourceConfig> boot_source;
    MachineConfig machine;
    std::vector<DriveConfig> drives; // in the order they were configured
    std::vector<NetConfig> net;      // likewise
    ConsoleConfig console;
    std::optional<EntropyConfig> entropy; // PUT /entropy: a virtio-rng device
    std::optional<VsockConfig> vsock; // PUT /vsock, config-file "vsock"
    std::optional<BalloonConfig> balloon; // PUT /balloon, config-file "balloon"
};

// Firecracker's --no-seccomp / --seccomp-filter. Recorded only: Ember installs no seccomp
// filters yet, whichever is chosen.
enum class SeccompMode { Default, Disabled, Custom };

struct RunOptions {
    bool boot_timer = false;
    SeccompMode seccomp = SeccompMode::Default;
    std::string seccomp_filter; // the filter file, with SeccompMode::Custom
    std::string kvm_path = "/dev/kvm";
    // Ember's stdin feeds the guest console (HostConsole). `ember run` turns it off: there stdin
    // is the command's, relayed over vsock.
    bool console_input = true;
};

} // namespace ember
