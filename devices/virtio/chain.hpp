#pragma once
// Pure helpers over a resolved descriptor chain (virtio 1.2 §2.7.4: device-readable buffers
// come before device-writable ones), shared by devices that stream bytes through chains.

#include "devices/virtio/queue.hpp"

#include <cstddef>
#include <span>

namespace ember::virtio {

// Bytes a chain of device-writable buffers can take; 0 if any buffer is device-readable (the
// chain is then unusable for receiving).
std::size_t writable_capacity(std::span<const Descriptor> chain) noexcept;

// Copies `data` into the writable buffers of `chain` from its start; returns bytes copied (at
// most writable_capacity(chain)). Stops at the first device-readable buffer.
std::size_t copy_to_chain(std::span<const Descriptor> chain, std::span<const std::byte> data) noexcept;

} // namespace ember::virtio
