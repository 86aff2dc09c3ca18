#pragma once
// virtio-blk request parsing (virtio 1.2 §5.2.6): a pure function from a resolved descriptor
// chain to a request or a typed error, so every hostile layout is unit-tested and fuzzed without
// a device around it.
//
// Layout accepted (what Linux, Firecracker and QEMU's drivers produce): the 16-byte header
// (type, reserved, sector) in the first, device-readable descriptor; data buffers in the middle;
// the status byte as the last byte of the last, device-writable descriptor.

#include "devices/virtio/queue.hpp"

#include "vmm/base/guest_addr.hpp"

#include <cstdint>
#include <optional>
#include <span>

namespace ember::virtio::block {

inline constexpr std::uint64_t SECTOR_SIZE = 512;
inline constexpr std::uint32_t ID_BYTES = 20; // VIRTIO_BLK_ID_BYTES

// §5.2.6 request types.
enum class RequestType : std::uint32_t { In = 0, Out = 1, Flush = 4, GetId = 8 };

// §5.2.6 status values.
inline constexpr std::uint8_t S_OK = 0;
inline constexpr std::uint8_t S_IOERR = 1;
inline constexpr std::uint8_t S_UNSUPP = 2;

enum class RequestError {
    None,
    NoHeader,           // first descriptor missing, device-writable or shorter than 16 bytes
    NoStatus,           // no device-writable last descriptor for the status byte
    WrongDirection,     // a data buffer the device would write to is readable, or vice versa
    NotSectorMultiple,  // IN/OUT data length not a multiple of 512
    ZeroLength,         // IN/OUT without data
    OutOfRange,         // sector + length beyond the capacity (or overflowing)
    TooManySegments,    // more data buffers than the advertised seg_max
    ReadOnly,           // OUT to a read-only drive
    Unsupported,        // unknown request type
};
const char* to_string(RequestError e) noexcept;

struct Request {
    RequestType type = RequestType::In;
    std::uint64_t sector = 0;
    std::uint64_t data_len = 0;
    std::span<const Descriptor> data; // the buffers between header and status
};

struct ParseResult {
    RequestError error = RequestError::None;
    Request request;                 // valid when error == None
    std::optional<GuestAddr> status; // the status byte, when the chain has one (even on error)
    // Status to report for an error (IOERR, or UNSUPP for an unknown type).
    std::uint8_t status_value() const noexcept;
};

struct DiskGeometry {
    std::uint64_t capacity_sectors = 0;
    bool read_only = false;
    std::uint32_t seg_max = 0;
};

ParseResult parse_request(std::span<const Descriptor> chain, const DiskGeometry& disk) noexcept;

} // namespace ember::virtio::block
