#pragma once
// Constants from the virtio 1.2 specification (OASIS, 2022) that Ember's devices and the MMIO
// transport share. Section numbers refer to that document.

#include <cstdint>

namespace ember::virtio {

// §2.1 Device status field.
namespace status {
inline constexpr std::uint32_t ACKNOWLEDGE = 1;
inline constexpr std::uint32_t DRIVER = 2;
inline constexpr std::uint32_t DRIVER_OK = 4;
inline constexpr std::uint32_t FEATURES_OK = 8;
inline constexpr std::uint32_t DEVICE_NEEDS_RESET = 64;
inline constexpr std::uint32_t FAILED = 128;
} // namespace status

// §6 Reserved feature bits (bit numbers).
namespace feature {
inline constexpr unsigned RING_INDIRECT_DESC = 28;
inline constexpr unsigned RING_EVENT_IDX = 29;
inline constexpr unsigned VERSION_1 = 32;
} // namespace feature

constexpr std::uint64_t bit(unsigned n) noexcept { return std::uint64_t{1} << n; }

// §5 Device IDs.
namespace device_id {
inline constexpr std::uint32_t NET = 1;
inline constexpr std::uint32_t BLOCK = 2;
inline constexpr std::uint32_t CONSOLE = 3;
inline constexpr std::uint32_t ENTROPY = 4;
inline constexpr std::uint32_t BALLOON = 5;
inline constexpr std::uint32_t VSOCK = 19;
} // namespace device_id

// §2.7.5 Split virtqueue descriptor flags.
namespace desc_flag {
inline constexpr std::uint16_t NEXT = 1;
inline constexpr std::uint16_t WRITE = 2;
inline constexpr std::uint16_t INDIRECT = 4;
} // namespace desc_flag

// §2.7.6 / §2.7.8 ring flags.
inline constexpr std::uint16_t AVAIL_F_NO_INTERRUPT = 1;

// §2.7.10 Largest split queue size.
inline constexpr std::uint16_t MAX_QUEUE_SIZE = 32768;

// §4.2.2 MMIO device register layout (modern interface, Version 2).
namespace mmio {
inline constexpr std::uint32_t MAGIC = 0x74726976; // "virt"
inline constexpr std::uint32_t VERSION = 2;
inline constexpr std::uint64_t MAGIC_VALUE = 0x000;
inline constexpr std::uint64_t VERSION_REG = 0x004;
inline constexpr std::uint64_t DEVICE_ID = 0x008;
inline constexpr std::uint64_t VENDOR_ID = 0x00c;
inline constexpr std::uint64_t DEVICE_FEATURES = 0x010;
inline constexpr std::uint64_t DEVICE_FEATURES_SEL = 0x014;
inline constexpr std::uint64_t DRIVER_FEATURES = 0x020;
inline constexpr std::uint64_t DRIVER_FEATURES_SEL = 0x024;
inline constexpr std::uint64_t QUEUE_SEL = 0x030;
inline constexpr std::uint64_t QUEUE_NUM_MAX = 0x034;
inline constexpr std::uint64_t QUEUE_NUM = 0x038;
inline constexpr std::uint64_t QUEUE_READY = 0x044;
inline constexpr std::uint64_t QUEUE_NOTIFY = 0x050;
inline constexpr std::uint64_t INTERRUPT_STATUS = 0x060;
inline constexpr std::uint64_t INTERRUPT_ACK = 0x064;
inline constexpr std::uint64_t STATUS = 0x070;
inline constexpr std::uint64_t QUEUE_DESC_LOW = 0x080;
inline constexpr std::uint64_t QUEUE_DESC_HIGH = 0x084;
inline constexpr std::uint64_t QUEUE_DRIVER_LOW = 0x090;
inline constexpr std::uint64_t QUEUE_DRIVER_HIGH = 0x094;
inline constexpr std::uint64_t QUEUE_DEVICE_LOW = 0x0a0;
inline constexpr std::uint64_t QUEUE_DEVICE_HIGH = 0x0a4;
inline constexpr std::uint64_t SHM_SEL = 0x0ac;
inline constexpr std::uint64_t SHM_LEN_LOW = 0x0b0;
inline constexpr std::uint64_t SHM_LEN_HIGH = 0x0b4;
inline constexpr std::uint64_t SHM_BASE_LOW = 0x0b8;
inline constexpr std::uint64_t SHM_BASE_HIGH = 0x0bc;
inline constexpr std::uint64_t CONFIG_GENERATION = 0x0fc;
inline constexpr std::uint64_t CONFIG = 0x100;
inline constexpr std::uint64_t SLOT_SIZE = 0x1000;
} // namespace mmio

// InterruptStatus bits (§4.2.2).
inline constexpr std::uint32_t INT_USED_RING = 1;
inline constexpr std::uint32_t INT_CONFIG = 2;

} // namespace ember::virtio
