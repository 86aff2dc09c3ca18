#pragma once
// The VM's configuration as plain values, independent of JSON: api/config parses Firecracker's
// schema into these and renders them back for GET /vm/config.

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
};

// Firecracker's `cache_type`: Unsafe ignores the guest's flushes (no VIRTIO_BLK_F_FLUSH),
// Writeback offers FLUSH and makes it an fdatasync.
enum class DriveCacheType { Unsafe, Writeback };
// Firecracker's `io_engine`. Ember defaults to Async (io_uring); Firecracker defaults to Sync.
enum class DriveIoEngine { Sync, Async };

struct DriveConfig {
    std::string drive_id;
    std::string path_on_host;
    bool is_root_device = false;
    bool is_read_only = false;
    std::optional<std::string> partuuid;
    DriveCacheType cache_type = DriveCacheType::Unsafe;
    DriveIoEngine io_engine = DriveIoEngine::Async;
};

// Firecracker's NetworkInterface (rate limiters come later).
struct NetConfig {
    std::string iface_id;
    std::string host_dev_name;
    std::optional<std::string> guest_mac; // "aa:bb:cc:dd:ee:ff", validated by the parser
    std::optional<std::uint16_t> mtu;     // 68..65535
};

// Which device carries the guest's interactive console (host stdin goes there). The 16550 UART
// (ttyS0) exists either way; Ember's "console" section adds virtio-console (hvc0) with `Virtio`.
enum class ConsoleDevice { Serial, Virtio };

// Where guest console output goes: stdout, or Firecracker's serial_out_path. Both the UART and
// virtio-console write there.
struct ConsoleConfig {
    ConsoleDevice device = ConsoleDevice::Serial;
    std::optional<std::string> serial_out_path;
};

struct VmConfig {
    std::optional<BootSourceConfig> boot_source;
    MachineConfig machine;
    std::vector<DriveConfig> drives; // in the order they were configured
    std::vector<NetConfig> net;      // likewise
    ConsoleConfig console;
};

struct RunOptions {
    bool boot_timer = false;
    std::string kvm_path = "/dev/kvm";
};

} // namespace ember
