#pragma once
// The snapshot file: everything but guest RAM that a fresh Ember process needs to bring a paused
// VM back. Layout (all integers little-endian):
//
//   magic "EMBERSNP" | u32 format version | u32 flags (0) | u64 payload length | payload | u64 CRC
//
// The CRC is CRC-64/XZ over every byte before it. decode_snapshot() checks magic, version,
// length and CRC before it parses the payload, and the payload parser is bounded (ByteReader),
// so a truncated, corrupted or foreign file is a FormatError naming what is wrong, never a
// partial state. The payload holds plain values only (guest addresses, indices, the kernel's
// uapi structs); restoring is done by the device and vCPU constructors that take these states.

#include "devices/legacy/boot_timer.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/balloon/device.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/rng/device.hpp"
#include "devices/virtio/vsock/device.hpp"
#include "vmm/base/guest_addr.hpp"
#include "vmm/kvm/kvm.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace ember {

// The version changes when a record this version defines changes its layout or meaning. A new
// device kind is not such a change: files without it read as before, and an Ember that does not
// know the kind refuses the file naming it ("device kind N is not a device this Ember knows").
inline constexpr std::uint32_t kSnapshotFormatVersion = 1;

// One region of guest RAM and where its bytes sit in the memory file.
struct SnapshotMemoryRegion {
    GuestAddr guest_addr;
    std::uint64_t size = 0;
    std::uint64_t file_offset = 0;
    bool operator==(const SnapshotMemoryRegion&) const = default;
};

// A virtio-mmio device: which device, where the device manager put it, and its saved state.
struct SnapshotDevice {
    std::string id; // drive_id, iface_id, vsock_id, ... ("" for singletons)
    std::uint64_t mmio_base = 0;
    std::uint32_t irq = 0;
    std::variant<virtio::block::BlockState, virtio::net::NetState, virtio::console::ConsoleState, virtio::rng::EntropyState,
                 virtio::vsock::VsockState, virtio::balloon::BalloonState>
        state;
};

struct SnapshotFile {
    std::string ember_version;
    std::string arch = "x86_64";
    std::string cpu_vendor; // CPUID leaf 0 of the host that took it ("AuthenticAMD", ...)
    bool diff = false;      // the memory file holds only the pages dirtied since the previous snapshot
    // The VM's configuration as the API layer rendered it (GET /vm/config JSON); the VMM layer
    // stores it without reading it.
    std::string vm_config;
    std::vector<SnapshotMemoryRegion> memory;
    VmState vm{};
    std::vector<VcpuState> vcpus;
    SerialState serial;
    I8042State i8042;
    BootTimerState boot_timer;
    std::vector<SnapshotDevice> devices;
};

std::vector<std::byte> encode_snapshot(const SnapshotFile& s);
// The file around an encoded payload: header, payload, CRC (encode_snapshot's framing; the
// fuzz target frames arbitrary payloads with it to get past the CRC).
std::vector<std::byte> frame_snapshot_payload(std::span<const std::byte> payload);
// Throws FormatError ("snapshot file: ...") for anything but a whole, intact file of this format
// version and this build's record sizes.
SnapshotFile decode_snapshot(std::span<const std::byte> file);

// Reads and decodes `path`; an unreadable file is a ConfigError naming it.
SnapshotFile read_snapshot_file(const std::string& path);
// Writes encode_snapshot(s) to `path` (created or truncated, mode 0600) and fsyncs it.
void write_snapshot_file(const std::string& path, const SnapshotFile& s);

// The format version of a snapshot file without decoding the rest (--describe-snapshot):
// "v1" style, as Firecracker prints it. Throws FormatError when the header is not Ember's.
std::string describe_snapshot_version(std::span<const std::byte> file);
// As describe_snapshot_version() on the first bytes of `path`; ConfigError naming an unreadable file.
std::string describe_snapshot_file_version(const std::string& path);

} // namespace ember
