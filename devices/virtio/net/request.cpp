#include "devices/virtio/net/request.hpp"

#include <algorithm>
#include <cstring>

namespace ember::virtio::net {

const char* to_string(TxError e) noexcept {
    switch (e) {
    case TxError::None: return "none";
    case TxError::DeviceWritable: return "device-writable buffer in a transmit chain";
    case TxError::TooShort: return "transmit frame shorter than its headers";
    case TxError::TooLong: return "transmit frame longer than 65562 bytes";
    }
    return "?";
}

TxError gather_tx(std::span<const Descriptor> chain, std::vector<iovec>& iov, std::size_t& total) noexcept {
    iov.clear();
    std::uint64_t sum = 0;
    for (const auto& d : chain) {
        if (d.device_writable) return TxError::DeviceWritable;
        sum += d.len;
        if (sum > MAX_FRAME_WITH_HDR) return TxError::TooLong;
        if (d.len != 0) iov.push_back(iovec{d.host, d.len});
    }
    if (sum < VNET_HDR_LEN + 14) return TxError::TooShort;
    total = static_cast<std::size_t>(sum);
    return TxError::None;
}

} // namespace ember::virtio::net
