#include "devices/virtio/chain.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace ember::virtio {

std::size_t writable_capacity(std::span<const Descriptor> chain) noexcept {
    std::uint64_t sum = 0;
    for (const auto& d : chain) {
        if (!d.device_writable) return 0;
        sum += d.len;
    }
    return static_cast<std::size_t>(std::min<std::uint64_t>(sum, SIZE_MAX));
}

std::size_t copy_to_chain(std::span<const Descriptor> chain, std::span<const std::byte> data) noexcept {
    std::size_t done = 0;
    for (const auto& d : chain) {
        if (done == data.size()) break;
        if (!d.device_writable) break;
        const std::size_t n = std::min<std::size_t>(d.len, data.size() - done);
        std::memcpy(d.host, data.data() + done, n);
        done += n;
    }
    return done;
}

} // namespace ember::virtio
