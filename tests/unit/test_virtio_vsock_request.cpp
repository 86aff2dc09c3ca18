// virtio-vsock pure helpers (devices/virtio/vsock/request.hpp): header encoding (virtio 1.2
// §5.10.6), tx chain parsing, rx packet writing, configuration space (§5.10.4) and the credit
// arithmetic of §5.10.6.3.

#include "devices/virtio/vsock/request.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::vsock;

namespace {

class Chain {
public:
    Chain& readable(std::uint32_t len) { return add(len, false); }
    Chain& writable(std::uint32_t len) { return add(len, true); }
    // A descriptor that claims `len` bytes over a one-byte buffer (only summed, never touched).
    Chain& huge(std::uint32_t len, bool writable) {
        add(1, writable);
        descs_.back().len = len;
        return *this;
    }
    // Copies `bytes` across the chain's buffers from its start.
    void fill(const std::vector<std::byte>& bytes) {
        std::size_t done = 0;
        for (auto& d : descs_) {
            const std::size_t n = std::min<std::size_t>(d.len, bytes.size() - done);
            std::memcpy(d.host, bytes.data() + done, n);
            done += n;
        }
    }
    std::vector<std::byte> gather() const {
        std::vector<std::byte> out;
        for (const auto& d : descs_) out.insert(out.end(), d.host, d.host + d.len);
        return out;
    }
    std::span<const Descriptor> span() const { return descs_; }

private:
    Chain& add(std::uint32_t len, bool writable) {
        bufs_.push_back(std::make_unique<std::byte[]>(len ? len : 1));
        std::memset(bufs_.back().get(), 0xee, len ? len : 1);
        descs_.push_back(Descriptor{GuestAddr(0x1000 * (descs_.size() + 1)), len, writable, bufs_.back().get()});
        return *this;
    }
    std::vector<std::unique_ptr<std::byte[]>> bufs_;
    std::vector<Descriptor> descs_;
};

Header sample(std::uint32_t len) {
    Header h;
    h.src_cid = 3;
    h.dst_cid = HOST_CID;
    h.src_port = 0x12345678;
    h.dst_port = 52;
    h.len = len;
    h.type = TYPE_STREAM;
    h.op = static_cast<std::uint16_t>(Op::Rw);
    h.flags = 0;
    h.buf_alloc = 262144;
    h.fwd_cnt = 0xfffffff0;
    return h;
}

std::vector<std::byte> packet(const Header& h, std::size_t payload_len) {
    const auto raw = encode(h);
    std::vector<std::byte> out(raw.begin(), raw.end());
    for (std::size_t i = 0; i < payload_len; ++i) out.push_back(static_cast<std::byte>(i * 7 + 1));
    return out;
}

std::vector<std::byte> flatten(const std::vector<iovec>& iov) {
    std::vector<std::byte> out;
    for (const auto& v : iov) {
        const auto* p = static_cast<const std::byte*>(v.iov_base);
        out.insert(out.end(), p, p + v.iov_len);
    }
    return out;
}

} // namespace

TEST_CASE("vsock header is 44 little-endian bytes at the spec's offsets") {
    const Header h = sample(5);
    const auto raw = encode(h);
    REQUIRE(raw.size() == 44);
    CHECK(raw[0] == std::byte{3});          // src_cid
    CHECK(raw[8] == std::byte{2});          // dst_cid
    CHECK(raw[16] == std::byte{0x78});      // src_port, low byte first
    CHECK(raw[19] == std::byte{0x12});
    CHECK(raw[20] == std::byte{52});        // dst_port
    CHECK(raw[24] == std::byte{5});         // len
    CHECK(raw[28] == std::byte{1});         // type STREAM
    CHECK(raw[30] == std::byte{5});         // op RW
    CHECK(raw[38] == std::byte{4});         // buf_alloc 0x40000
    CHECK(raw[40] == std::byte{0xf0});      // fwd_cnt
    CHECK(raw[43] == std::byte{0xff});
    CHECK(decode(raw) == h);
}

TEST_CASE("vsock tx: header and payload in one buffer or split anywhere") {
    const Header h = sample(100);
    const auto bytes = packet(h, 100);
    const std::vector<std::byte> want(bytes.begin() + HDR_LEN, bytes.end());
    for (std::uint32_t cut : {0u, 1u, 20u, 43u, 44u, 45u, 143u, 144u}) {
        Chain c;
        c.readable(cut).readable(static_cast<std::uint32_t>(bytes.size()) - cut);
        c.fill(bytes);
        TxPacket p;
        REQUIRE(parse_tx(c.span(), p) == TxError::None);
        CHECK(p.hdr == h);
        CHECK(flatten(p.payload) == want);
        for (const auto& v : p.payload) CHECK(v.iov_len > 0);
    }
    // Header spread over many small buffers, including empty ones.
    Chain c;
    for (int i = 0; i < 11; ++i) c.readable(4).readable(0);
    c.readable(100);
    c.fill(bytes);
    TxPacket p;
    REQUIRE(parse_tx(c.span(), p) == TxError::None);
    CHECK(p.hdr == h);
    CHECK(flatten(p.payload) == want);
}

TEST_CASE("vsock tx: bytes past header.len are not payload") {
    const Header h = sample(10);
    Chain c;
    c.readable(HDR_LEN + 64);
    c.fill(packet(h, 64));
    TxPacket p;
    REQUIRE(parse_tx(c.span(), p) == TxError::None);
    CHECK(flatten(p.payload).size() == 10);
}

TEST_CASE("vsock tx: refused chains") {
    TxPacket p;
    SECTION("empty chain") {
        Chain c;
        CHECK(parse_tx(c.span(), p) == TxError::TooShort);
    }
    SECTION("43 bytes") {
        Chain c;
        c.readable(43);
        CHECK(parse_tx(c.span(), p) == TxError::TooShort);
    }
    SECTION("a writable buffer") {
        Chain c;
        c.readable(HDR_LEN).writable(16);
        c.fill(packet(sample(16), 16));
        CHECK(parse_tx(c.span(), p) == TxError::DeviceWritable);
    }
    SECTION("len past the chain") {
        Chain c;
        c.readable(HDR_LEN + 15);
        c.fill(packet(sample(16), 15));
        CHECK(parse_tx(c.span(), p) == TxError::LenPastChain);
    }
    SECTION("len above 64 KiB even if the chain claims enough") {
        Chain c;
        c.readable(HDR_LEN).huge(0x20000, false);
        c.fill(packet(sample(MAX_PAYLOAD + 1), 0));
        CHECK(parse_tx(c.span(), p) == TxError::TooLong);
    }
    SECTION("descriptor lengths summing past 4 GiB do not wrap") {
        Chain c;
        c.readable(HDR_LEN).huge(0xffffffff, false).huge(0xffffffff, false);
        c.fill(packet(sample(0), 0));
        CHECK(parse_tx(c.span(), p) == TxError::None);
        CHECK(p.payload.empty());
    }
}

TEST_CASE("vsock rx: capacity and writing a packet across buffers") {
    std::uint32_t room = 0;
    {
        Chain c;
        c.writable(43);
        CHECK(rx_capacity(c.span(), room) == RxError::TooShort);
    }
    {
        Chain c;
        c.writable(100).readable(10);
        CHECK(rx_capacity(c.span(), room) == RxError::DeviceReadable);
        CHECK(room == 0);
    }
    {
        Chain c;
        c.writable(HDR_LEN).huge(0xffffffff, true);
        REQUIRE(rx_capacity(c.span(), room) == RxError::None);
        CHECK(room == MAX_PAYLOAD);
    }
    for (std::uint32_t cut : {1u, 44u, 50u}) {
        Chain c;
        c.writable(cut).writable(0).writable(200);
        REQUIRE(rx_capacity(c.span(), room) == RxError::None);
        CHECK(room == cut + 200 - HDR_LEN);
        std::vector<std::byte> payload(30);
        for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::byte>(i + 1);
        Header h = sample(999); // len is replaced by the payload size
        CHECK(write_rx(c.span(), h, payload) == HDR_LEN + 30);
        const auto all = c.gather();
        h.len = 30;
        CHECK(decode(std::span<const std::byte, HDR_LEN>(all.data(), HDR_LEN)) == h);
        CHECK(std::equal(payload.begin(), payload.end(), all.begin() + HDR_LEN));
        CHECK(all[HDR_LEN + 30] == std::byte{0xee}); // nothing past the packet
    }
}

TEST_CASE("vsock config space: guest_cid as le64, zero past it") {
    std::vector<std::uint8_t> out(12, 0xaa);
    read_config(0x0102030405060708, 0, out);
    CHECK(out == std::vector<std::uint8_t>{8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0});
    std::vector<std::uint8_t> hi(4, 0xaa);
    read_config(0x0102030405060708, 4, hi);
    CHECK(hi == std::vector<std::uint8_t>{4, 3, 2, 1});
    read_config(7, UINT64_MAX - 1, hi);
    CHECK(hi == std::vector<std::uint8_t>{0, 0, 0, 0});
}

TEST_CASE("vsock credit: peer free space, wrapping counters, lying peers") {
    Credit c;
    Header h = sample(0);
    h.buf_alloc = 1000;
    h.fwd_cnt = 0;
    c.update_peer(h);
    CHECK(c.peer_free() == 1000);
    c.tx_cnt = 600;
    CHECK(c.peer_free() == 400);
    c.tx_cnt = 1000;
    CHECK(c.peer_free() == 0);
    h.fwd_cnt = 1000;
    c.update_peer(h);
    CHECK(c.peer_free() == 1000);
    // Counters wrap modulo 2^32 (§5.10.6.3).
    c.tx_cnt = 100;
    h.fwd_cnt = 0xffffff00; // 356 bytes in flight across the wrap
    c.update_peer(h);
    CHECK(c.peer_free() == 1000 - 356);
    // A peer claiming to have consumed more than we sent gets no credit.
    h.fwd_cnt = 200;
    c.update_peer(h);
    CHECK(c.peer_free() == 0);
    // A peer shrinking buf_alloc below what is in flight gets none either.
    h.fwd_cnt = 0;
    h.buf_alloc = 50;
    c.update_peer(h);
    CHECK(c.peer_free() == 0);
}

TEST_CASE("vsock credit: what the guest may send us and when to tell it more") {
    Credit c;
    c.buf_alloc = 4096;
    CHECK(c.may_receive(4096));
    CHECK_FALSE(c.may_receive(4097));
    c.rx_cnt = 4000;
    CHECK(c.may_receive(96));
    CHECK_FALSE(c.may_receive(97));
    c.fwd_cnt = 4000;
    CHECK(c.may_receive(4096));
    CHECK(c.update_due(4000));
    CHECK_FALSE(c.update_due(4001));
    c.last_fwd_sent = 4000;
    CHECK_FALSE(c.update_due(1));
    // Wrap: rx_cnt past 2^32.
    c.fwd_cnt = 0xfffffff0;
    c.rx_cnt = 0x10;
    CHECK(c.buffered() == 0x20);
    CHECK(c.may_receive(4096 - 0x20));
    CHECK_FALSE(c.may_receive(4096 - 0x1f));
}
