#include "devices/virtio/rng/request.hpp"

#include <algorithm>

namespace ember::virtio::rng {

const char* to_string(RequestError e) noexcept {
    switch (e) {
    case RequestError::None: return "none";
    case RequestError::DeviceReadable: return "device-readable buffer in an entropy request";
    }
    return "?";
}

RequestError gather_buffers(std::span<const Descriptor> chain, std::size_t max_bytes, std::vector<iovec>& iov,
                            std::size_t& total) noexcept {
    iov.clear();
    total = 0;
    for (const auto& d : chain)
        if (!d.device_writable) return RequestError::DeviceReadable;
    for (const auto& d : chain) {
        if (total == max_bytes) break;
        if (d.len == 0) continue;
        const std::size_t n = std::min<std::size_t>(d.len, max_bytes - total);
        iov.push_back(iovec{d.host, n});
        total += n;
    }
    return RequestError::None;
}

} // namespace ember::virtio::rng
