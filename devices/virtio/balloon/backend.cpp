#include "devices/virtio/balloon/backend.hpp"

#include "vmm/base/guest_memory.hpp"

namespace ember::virtio::balloon {

DiscardResult discard_ranges(const GuestMemory& mem, std::span<const PageRange> ranges) noexcept {
    DiscardResult r;
    for (const auto& pr : ranges) {
        if (const int err = mem.discard(pr.start, pr.pages * PAGE_BYTES); err != 0) {
            if (r.error == 0) r.error = err;
            continue;
        }
        r.pages += pr.pages;
    }
    return r;
}

} // namespace ember::virtio::balloon
