#pragma once
// virtio-net frame handling as pure functions over resolved descriptor chains (virtio 1.2
// §5.1.6): what a transmit chain may look like and how a received frame is spread over receive
// chains. Unit-tested and fuzzed without a TAP.

#include "devices/virtio/chain.hpp"
#include "devices/virtio/queue.hpp"

#include <array>
#include <cstddef>
#include <string>
#include <cstdint>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::net {

// struct virtio_net_hdr_v1 (§5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
// csum_offset, num_buffers. VERSION_1 devices always use the 12-byte form.
inline constexpr std::size_t VNET_HDR_LEN = 12;
inline constexpr std::size_t NUM_BUFFERS_OFFSET = 10;
// Largest frame with its header: a 64 KiB TSO frame, Ethernet header and vnet header
// (Firecracker's MAX_BUFFER_SIZE).
inline constexpr std::size_t MAX_FRAME_WITH_HDR = 65562;

enum class TxError {
    None,
    DeviceWritable, // a transmit buffer the device would write to
    TooShort,       // not even a vnet header and an Ethernet header
    TooLong,        // more than MAX_FRAME_WITH_HDR bytes
};
const char* to_string(TxError e) noexcept;

// Checks a transmit chain and gathers it into `iov` (header included: the TAP takes it as is).
TxError gather_tx(std::span<const Descriptor> chain, std::vector<iovec>& iov, std::size_t& total) noexcept;

} // namespace ember::virtio::net
