#pragma once
// virtio-rng (virtio 1.2 §5.4) request handling as a pure function: what a requestq chain may
// look like and which bytes of it the device fills. Unit-tested and fuzzed without a guest.
//
// §5.4.6.1: the driver places device-writable buffers only; §5.4.6.2: the device MUST place one
// or more random bytes into the buffer and MAY use less than its whole length. Ember fills at
// most MAX_REQUEST_BYTES of a chain, so one hostile chain (up to 256 descriptors, each as long
// as guest RAM, all over the same pages) costs the event loop a bounded amount of work.

#include "devices/virtio/queue.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::rng {

// Bytes served per chain at most; Linux's virtio-rng asks for far less per buffer (its
// internal buffer is a few cache lines), so this bounds only hostile or unusual drivers.
inline constexpr std::size_t MAX_REQUEST_BYTES = 64 * 1024;

enum class RequestError {
    None,
    DeviceReadable, // a buffer the device may only read (§5.4.6.1: device-writable only)
};
const char* to_string(RequestError e) noexcept;

// Checks a requestq chain and gathers its first `max_bytes` writable bytes into `iov`, in chain
// order (zero-length buffers skipped, the last one cut short where the limit falls); `total` is
// their sum (0 for a chain of empty buffers: nothing to fill, not an error). On error `iov` is
// empty and `total` 0: the whole chain is checked, also past the limit.
RequestError gather_buffers(std::span<const Descriptor> chain, std::size_t max_bytes, std::vector<iovec>& iov,
                            std::size_t& total) noexcept;

} // namespace ember::virtio::rng
