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

bool parse_mac(const std::string& text, std::array<std::uint8_t, 6>& out) noexcept {
    if (text.size() != 17) return false;
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    for (std::size_t i = 0; i < 6; ++i) {
        const int hi = hex(text[3 * i]), lo = hex(text[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) return false;
        out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
    }
    return (out[0] & 1) == 0;
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
