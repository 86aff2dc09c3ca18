#include "devices/virtio/vsock/request.hpp"

#include <algorithm>
#include <cstring>

namespace ember::virtio::vsock {

namespace {

template <typename T> void put_le(std::byte* p, T v) noexcept {
    for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
template <typename T> T get_le(const std::byte* p) noexcept {
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>(v | static_cast<T>(static_cast<T>(p[i]) << (8 * i)));
    return v;
}

} // namespace

void read_config(std::uint64_t guest_cid, std::uint64_t offset, std::span<std::uint8_t> data) noexcept {
    for (std::size_t i = 0; i < data.size(); ++i) {
        const std::uint64_t at = offset + i;
        data[i] = static_cast<std::uint8_t>(at < CONFIG_SIZE && at >= offset ? guest_cid >> (8 * at) : 0);
    }
}

std::array<std::byte, HDR_LEN> encode(const Header& h) noexcept {
    std::array<std::byte, HDR_LEN> b{};
    put_le(b.data() + 0, h.src_cid);
    put_le(b.data() + 8, h.dst_cid);
    put_le(b.data() + 16, h.src_port);
    put_le(b.data() + 20, h.dst_port);
    put_le(b.data() + 24, h.len);
    put_le(b.data() + 28, h.type);
    put_le(b.data() + 30, h.op);
    put_le(b.data() + 32, h.flags);
    put_le(b.data() + 36, h.buf_alloc);
    put_le(b.data() + 40, h.fwd_cnt);
    return b;
}

Header decode(std::span<const std::byte, HDR_LEN> b) noexcept {
    Header h;
    h.src_cid = get_le<std::uint64_t>(b.data() + 0);
    h.dst_cid = get_le<std::uint64_t>(b.data() + 8);
    h.src_port = get_le<std::uint32_t>(b.data() + 16);
    h.dst_port = get_le<std::uint32_t>(b.data() + 20);
    h.len = get_le<std::uint32_t>(b.data() + 24);
    h.type = get_le<std::uint16_t>(b.data() + 28);
    h.op = get_le<std::uint16_t>(b.data() + 30);
    h.flags = get_le<std::uint32_t>(b.data() + 32);
    h.buf_alloc = get_le<std::uint32_t>(b.data() + 36);
    h.fwd_cnt = get_le<std::uint32_t>(b.data() + 40);
    return h;
}

const char* to_string(TxError e) noexcept {
    switch (e) {
    case TxError::None: return "none";
    case TxError::DeviceWritable: return "device-writable buffer in a tx chain";
    case TxError::TooShort: return "tx chain shorter than a packet header";
    case TxError::TooLong: return "tx packet payload longer than 65536 bytes";
    case TxError::LenPastChain: return "tx packet length past the end of its chain";
    }
    return "?";
}

const char* to_string(RxError e) noexcept {
    switch (e) {
    case RxError::None: return "none";
    case RxError::DeviceReadable: return "device-readable buffer in a rx chain";
    case RxError::TooShort: return "rx chain shorter than a packet header";
    }
    return "?";
}

TxError parse_tx(std::span<const Descriptor> chain, TxPacket& out) noexcept {
    out.payload.clear();
    std::array<std::byte, HDR_LEN> raw{};
    std::size_t have = 0;
    std::uint64_t total = 0;
    for (const auto& d : chain) {
        if (d.device_writable) return TxError::DeviceWritable;
        total += d.len;
    }
    if (total < HDR_LEN) return TxError::TooShort;
    // First pass: the header; second: the payload, now that its length is known.
    std::size_t idx = 0, skip = 0;
    for (; idx < chain.size() && have < HDR_LEN; ++idx) {
        const Descriptor& d = chain[idx];
        const std::size_t n = std::min<std::size_t>(d.len, HDR_LEN - have);
        if (n) std::memcpy(raw.data() + have, d.host, n);
        have += n;
        skip = n;
    }
    out.hdr = decode(raw);
    if (out.hdr.len > MAX_PAYLOAD) return TxError::TooLong;
    if (out.hdr.len > total - HDR_LEN) return TxError::LenPastChain;
    std::uint32_t left = out.hdr.len;
    // The descriptor holding the header's last byte may carry payload after it.
    if (idx > 0) {
        const Descriptor& d = chain[idx - 1];
        const std::uint32_t rest = d.len - static_cast<std::uint32_t>(skip);
        const std::uint32_t n = std::min(rest, left);
        if (n) out.payload.push_back(iovec{d.host + skip, n});
        left -= n;
    }
    for (; idx < chain.size() && left; ++idx) {
        const Descriptor& d = chain[idx];
        const std::uint32_t n = std::min(d.len, left);
        if (n) out.payload.push_back(iovec{d.host, n});
        left -= n;
    }
    return TxError::None;
}

RxError rx_capacity(std::span<const Descriptor> chain, std::uint32_t& payload_room) noexcept {
    payload_room = 0;
    std::uint64_t total = 0;
    for (const auto& d : chain) {
        if (!d.device_writable) return RxError::DeviceReadable;
        total += d.len;
    }
    if (total < HDR_LEN) return RxError::TooShort;
    payload_room = static_cast<std::uint32_t>(std::min<std::uint64_t>(total - HDR_LEN, MAX_PAYLOAD));
    return RxError::None;
}

std::uint32_t write_rx(std::span<const Descriptor> chain, Header hdr, std::span<const std::byte> payload) noexcept {
    hdr.len = static_cast<std::uint32_t>(payload.size());
    const std::array<std::byte, HDR_LEN> raw = encode(hdr);
    std::size_t hdr_done = 0, pay_done = 0;
    for (const auto& d : chain) {
        if (!d.device_writable) break;
        std::size_t off = 0;
        if (hdr_done < HDR_LEN) {
            const std::size_t n = std::min<std::size_t>(d.len, HDR_LEN - hdr_done);
            std::memcpy(d.host, raw.data() + hdr_done, n);
            hdr_done += n;
            off = n;
        }
        if (hdr_done == HDR_LEN && pay_done < payload.size() && off < d.len) {
            const std::size_t n = std::min<std::size_t>(d.len - off, payload.size() - pay_done);
            std::memcpy(d.host + off, payload.data() + pay_done, n);
            pay_done += n;
        }
        if (hdr_done == HDR_LEN && pay_done == payload.size()) break;
    }
    return static_cast<std::uint32_t>(hdr_done + pay_done);
}

} // namespace ember::virtio::vsock
