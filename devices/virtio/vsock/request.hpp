#pragma once
// virtio-vsock (virtio 1.2 §5.10) packet handling as pure functions over resolved descriptor
// chains: the 44-byte packet header, what a tx chain may look like, how an rx packet is written,
// and the per-connection credit arithmetic of §5.10.6.3. Unit-tested and fuzzed without sockets.

#include "devices/virtio/queue.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::vsock {

// §5.10.4: configuration space is one le64, the guest's CID.
inline constexpr std::size_t CONFIG_SIZE = 8;
// Reserved CIDs (§5.10.4): 0 hypervisor, 1 reserved/local, 2 host, 0xffffffff any. A guest
// CID must be >= 3 (Firecracker vmm_config/vsock.rs and the spec).
inline constexpr std::uint64_t HOST_CID = 2;
inline constexpr std::uint64_t MIN_GUEST_CID = 3;

void read_config(std::uint64_t guest_cid, std::uint64_t offset, std::span<std::uint8_t> data) noexcept;

// struct virtio_vsock_hdr (§5.10.6), little-endian, packed:
//   le64 src_cid @0, le64 dst_cid @8, le32 src_port @16, le32 dst_port @20, le32 len @24,
//   le16 type @28, le16 op @30, le32 flags @32, le32 buf_alloc @36, le32 fwd_cnt @40.
inline constexpr std::size_t HDR_LEN = 44;

inline constexpr std::uint16_t TYPE_STREAM = 1;

enum class Op : std::uint16_t {
    Invalid = 0,
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
};

// SHUTDOWN flags (§5.10.6.4): the sender will receive / send no more.
inline constexpr std::uint32_t SHUTDOWN_RCV = 1;
inline constexpr std::uint32_t SHUTDOWN_SEND = 2;

// Event queue (§5.10.6.5): struct virtio_vsock_event { le32 id; }.
inline constexpr std::uint32_t EVENT_TRANSPORT_RESET = 0;
inline constexpr std::size_t EVENT_LEN = 4;

// Largest payload one packet carries in either direction (Firecracker's MAX_PKT_BUF_SIZE,
// devices/virtio/vsock/mod.rs: 64 KiB; Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE is the same).
inline constexpr std::uint32_t MAX_PAYLOAD = 64 * 1024;

struct Header {
    std::uint64_t src_cid = 0;
    std::uint64_t dst_cid = 0;
    std::uint32_t src_port = 0;
    std::uint32_t dst_port = 0;
    std::uint32_t len = 0;
    std::uint16_t type = 0;
    std::uint16_t op = 0;
    std::uint32_t flags = 0;
    std::uint32_t buf_alloc = 0;
    std::uint32_t fwd_cnt = 0;
    bool operator==(const Header&) const = default;
};

std::array<std::byte, HDR_LEN> encode(const Header& h) noexcept;
Header decode(std::span<const std::byte, HDR_LEN> b) noexcept;

enum class TxError {
    None,
    DeviceWritable, // a tx buffer the device would write to (§5.10.6.2: driver-to-device only)
    TooShort,       // fewer readable bytes than a header
    TooLong,        // header.len above MAX_PAYLOAD
    LenPastChain,   // header.len larger than the bytes following the header in the chain
};
const char* to_string(TxError e) noexcept;

// A parsed tx packet. `payload` holds exactly header.len bytes as slices of the chain's
// buffers (header bytes excluded, zero-length pieces omitted); valid while the chain is.
struct TxPacket {
    Header hdr;
    std::vector<iovec> payload;
};

// Parses a txq chain. The header may span buffers (Linux puts it in its own buffer; the spec
// does not require that). Bytes past header.len are ignored (Linux never sends them; Firecracker
// ignores them too). The walk visits each descriptor once; lengths are summed in 64 bits.
TxError parse_tx(std::span<const Descriptor> chain, TxPacket& out) noexcept;

enum class RxError {
    None,
    DeviceReadable, // a rx buffer the device may not write
    TooShort,       // cannot hold a header
};
const char* to_string(RxError e) noexcept;

// Payload bytes a rxq chain can take after the header, capped at MAX_PAYLOAD.
RxError rx_capacity(std::span<const Descriptor> chain, std::uint32_t& payload_room) noexcept;

// Writes `hdr` (with hdr.len set to the payload size) and `payload` into a rxq chain that
// rx_capacity() accepted with room >= payload.size(). Returns the bytes written (the used
// length): HDR_LEN + payload.size().
std::uint32_t write_rx(std::span<const Descriptor> chain, Header hdr, std::span<const std::byte> payload) noexcept;

// Per-connection credit (§5.10.6.3). Counters are free-running u32 and wrap, as in the spec.
//   - Toward the guest: we may send `peer_free()` payload bytes, where
//     peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt).
//   - From the guest: we advertise buf_alloc and fwd_cnt; the guest may have at most buf_alloc
//     bytes in flight that we have not forwarded. More than that is a protocol violation.
struct Credit {
    std::uint32_t buf_alloc = 0;      // ours, advertised in every header we send
    std::uint32_t fwd_cnt = 0;        // payload bytes from the guest we forwarded to the host
    std::uint32_t rx_cnt = 0;         // payload bytes from the guest we accepted
    std::uint32_t last_fwd_sent = 0;  // fwd_cnt as of the last header we sent
    std::uint32_t peer_buf_alloc = 0;
    std::uint32_t peer_fwd_cnt = 0;
    std::uint32_t tx_cnt = 0;         // payload bytes we sent to the guest
    bool operator==(const Credit&) const = default;

    // Takes the guest's buf_alloc / fwd_cnt from any header it sent.
    void update_peer(const Header& h) noexcept {
        peer_buf_alloc = h.buf_alloc;
        peer_fwd_cnt = h.fwd_cnt;
    }
    // Bytes we may still send; 0 when the guest reports more consumed than we sent (a lying
    // driver gets no credit rather than a wrapped huge one).
    std::uint32_t peer_free() const noexcept {
        const std::uint32_t in_flight = tx_cnt - peer_fwd_cnt;
        return in_flight > peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
    }
    // Bytes from the guest accepted but not yet forwarded.
    std::uint32_t buffered() const noexcept { return rx_cnt - fwd_cnt; }
    // True if accepting `n` more guest bytes stays within what we advertised.
    bool may_receive(std::uint32_t n) const noexcept { return buffered() <= buf_alloc && n <= buf_alloc - buffered(); }
    // A CREDIT_UPDATE is worth sending once the guest's view of our free space is stale by at
    // least `threshold` bytes (Linux sends on crossing VIRTIO_VSOCK_MAX_PKT_BUF_SIZE; so do we).
    bool update_due(std::uint32_t threshold) const noexcept { return fwd_cnt - last_fwd_sent >= threshold; }
};

} // namespace ember::virtio::vsock
