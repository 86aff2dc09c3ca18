#pragma once
// The host side of virtio-balloon: what happens to pages the guest hands over. Inflated, hinted
// and reported pages are given back to the host kernel with GuestMemory::discard()
// (MADV_DONTNEED on the guest-RAM mapping, Firecracker's remove_range): the host frees them and
// the guest reads zeros if it touches them again. Deflated pages need nothing from the host (the
// next guest access faults a fresh page in); they are only counted.

#include "devices/virtio/balloon/request.hpp"

#include <cstdint>
#include <span>

namespace ember {
class GuestMemory;
}

namespace ember::virtio::balloon {

struct DiscardResult {
    std::uint64_t pages = 0; // pages given back
    int error = 0;           // errno of the first range that failed (the others are still tried)
};

// Discards every range (each inside one RAM region: parse_* made it so).
DiscardResult discard_ranges(const GuestMemory& mem, std::span<const PageRange> ranges) noexcept;

} // namespace ember::virtio::balloon
