// virtio-net pure helpers (devices/virtio/net/request.hpp) and the chain helpers shared with
// virtio-console (devices/virtio/chain.hpp): transmit chain checks (virtio 1.2 §5.1.6.2), MAC
// parsing, and copying received bytes into device-writable buffers (§2.7.4, §5.1.6.3).

#include "devices/virtio/chain.hpp"
#include "devices/virtio/net/request.hpp"
#include "vmm/base/mac_addr.hpp"

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <sys/uio.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::net;

namespace {

// Descriptors over buffers this test owns; every buffer starts filled with kFill so that a test
// can tell which bytes were written.
constexpr std::byte kFill{0xee};

class Chain {
public:
    Chain& readable(std::uint32_t len) { return add(len, false); }
    Chain& writable(std::uint32_t len) { return add(len, true); }
    // A descriptor claiming `len` bytes over a one-byte buffer: for functions that only sum
    // lengths and must never touch the bytes.
    Chain& huge(std::uint32_t len, bool writable) {
        add(1, writable);
        descs_.back().len = len;
        return *this;
    }
    std::span<const Descriptor> span() const { return descs_; }
    const Descriptor& operator[](std::size_t i) const { return descs_[i]; }
    std::vector<std::uint8_t> bytes(std::size_t i) const {
        const Descriptor& d = descs_[i];
        std::vector<std::uint8_t> out(d.len);
        for (std::size_t k = 0; k < d.len; ++k) out[k] = static_cast<std::uint8_t>(d.host[k]);
        return out;
    }

private:
    Chain& add(std::uint32_t len, bool writable) {
        const std::size_t n = std::max<std::size_t>(len, 1);
        storage_.push_back(std::make_unique<std::byte[]>(n));
        for (std::size_t k = 0; k < n; ++k) storage_.back()[k] = kFill;
        descs_.push_back(Descriptor{GuestAddr(0x1000 * (descs_.size() + 1)), len, writable, storage_.back().get()});
        return *this;
    }
    std::vector<std::unique_ptr<std::byte[]>> storage_;
    std::vector<Descriptor> descs_;
};

std::vector<std::byte> pattern(std::size_t n, std::uint8_t seed = 1) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(seed + i * 7);
    return v;
}

std::vector<std::uint8_t> as_u8(const std::vector<std::byte>& v, std::size_t from, std::size_t len) {
    std::vector<std::uint8_t> out(len);
    for (std::size_t i = 0; i < len; ++i) out[i] = static_cast<std::uint8_t>(v[from + i]);
    return out;
}

std::vector<std::uint8_t> filled(std::size_t n) { return std::vector<std::uint8_t>(n, static_cast<std::uint8_t>(kFill)); }

constexpr std::size_t kMinFrame = VNET_HDR_LEN + 14; // vnet header + Ethernet header

using Mac = std::array<std::uint8_t, 6>;
// MacAddr::parse with the bool interface these cases were written for (the parser moved from
// virtio-net's request.cpp to vmm/base); also checks that to_string() renders it back.
bool parse_mac(const std::string& text, Mac& out) {
    auto a = MacAddr::parse(text);
    if (!a) return false;
    out = a->bytes();
    auto again = MacAddr::parse(a->to_string());
    REQUIRE(again);
    CHECK(*again == *a);
    return true;
}

} // namespace

// ==========================================================================================
// gather_tx (§5.1.6.2: the driver-to-device frame is the vnet header followed by the packet)

TEST_CASE("net gather_tx: a well-formed frame is gathered in order with its total", "[net]") {
    Chain c;
    c.readable(VNET_HDR_LEN).readable(14).readable(100);
    std::vector<iovec> iov{iovec{nullptr, 5}}; // stale content is discarded
    std::size_t total = 0;
    REQUIRE(gather_tx(c.span(), iov, total) == TxError::None);
    CHECK(total == VNET_HDR_LEN + 14 + 100);
    REQUIRE(iov.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(iov[i].iov_base == c[i].host);
        CHECK(iov[i].iov_len == c[i].len);
    }
}

TEST_CASE("net gather_tx: a device-writable buffer anywhere refuses the chain", "[net]") {
    std::vector<iovec> iov;
    std::size_t total = 12345;
    SECTION("first") {
        Chain c;
        c.writable(VNET_HDR_LEN).readable(100);
        CHECK(gather_tx(c.span(), iov, total) == TxError::DeviceWritable);
    }
    SECTION("last") {
        Chain c;
        c.readable(VNET_HDR_LEN).readable(100).writable(1);
        CHECK(gather_tx(c.span(), iov, total) == TxError::DeviceWritable);
    }
    SECTION("zero-length and writable") {
        Chain c;
        c.readable(VNET_HDR_LEN).writable(0).readable(100);
        CHECK(gather_tx(c.span(), iov, total) == TxError::DeviceWritable);
    }
    SECTION("in a chain that is also too short") {
        Chain c;
        c.readable(1).writable(1);
        CHECK(gather_tx(c.span(), iov, total) == TxError::DeviceWritable);
    }
}

TEST_CASE("net gather_tx: a frame needs a vnet header and an Ethernet header", "[net]") {
    std::vector<iovec> iov;
    std::size_t total = 0;
    SECTION("empty chain") {
        Chain c;
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooShort);
    }
    SECTION("only zero-length buffers") {
        Chain c;
        c.readable(0).readable(0);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooShort);
    }
    SECTION("one byte short, in one buffer") {
        Chain c;
        c.readable(kMinFrame - 1);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooShort);
    }
    SECTION("one byte short, split") {
        Chain c;
        c.readable(VNET_HDR_LEN).readable(13);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooShort);
    }
    SECTION("exactly the two headers, in one buffer") {
        Chain c;
        c.readable(kMinFrame);
        CHECK(gather_tx(c.span(), iov, total) == TxError::None);
        CHECK(total == kMinFrame);
        CHECK(iov.size() == 1);
    }
    SECTION("exactly the two headers, split anywhere") {
        Chain c;
        c.readable(5).readable(VNET_HDR_LEN - 5).readable(14);
        CHECK(gather_tx(c.span(), iov, total) == TxError::None);
        CHECK(total == kMinFrame);
        CHECK(iov.size() == 3);
    }
}

TEST_CASE("net gather_tx: a frame may not exceed 65562 bytes with its headers", "[net]") {
    REQUIRE(MAX_FRAME_WITH_HDR == 65562);
    std::vector<iovec> iov;
    std::size_t total = 0;
    SECTION("exactly the maximum, in one buffer") {
        Chain c;
        c.readable(static_cast<std::uint32_t>(MAX_FRAME_WITH_HDR));
        CHECK(gather_tx(c.span(), iov, total) == TxError::None);
        CHECK(total == MAX_FRAME_WITH_HDR);
    }
    SECTION("exactly the maximum, split") {
        Chain c;
        c.readable(VNET_HDR_LEN).readable(static_cast<std::uint32_t>(MAX_FRAME_WITH_HDR - VNET_HDR_LEN - 1)).readable(1);
        CHECK(gather_tx(c.span(), iov, total) == TxError::None);
        CHECK(total == MAX_FRAME_WITH_HDR);
        CHECK(iov.size() == 3);
    }
    SECTION("one byte over, in one buffer") {
        Chain c;
        c.readable(static_cast<std::uint32_t>(MAX_FRAME_WITH_HDR + 1));
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooLong);
    }
    SECTION("one byte over, in the last of several buffers") {
        Chain c;
        c.readable(VNET_HDR_LEN).readable(static_cast<std::uint32_t>(MAX_FRAME_WITH_HDR - VNET_HDR_LEN)).readable(1);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooLong);
    }
    SECTION("one buffer of 4 GiB - 1") {
        Chain c;
        c.huge(UINT32_MAX, false);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooLong);
    }
    SECTION("lengths whose 32-bit sum would wrap to a valid frame size") {
        // 100 + (2^32 - 50) is 2^32 + 50: 50 bytes, a plausible frame, in 32-bit arithmetic.
        Chain c;
        c.readable(100).huge(UINT32_MAX - 49, false);
        CHECK(gather_tx(c.span(), iov, total) == TxError::TooLong);
    }
}

TEST_CASE("net gather_tx: zero-length buffers are skipped but the frame is still checked", "[net]") {
    Chain c;
    c.readable(0).readable(VNET_HDR_LEN).readable(0).readable(0).readable(14).readable(0);
    std::vector<iovec> iov;
    std::size_t total = 0;
    REQUIRE(gather_tx(c.span(), iov, total) == TxError::None);
    CHECK(total == kMinFrame);
    REQUIRE(iov.size() == 2);
    CHECK(iov[0].iov_base == c[1].host);
    CHECK(iov[0].iov_len == VNET_HDR_LEN);
    CHECK(iov[1].iov_base == c[4].host);
    CHECK(iov[1].iov_len == 14);
    for (const auto& v : iov) CHECK(v.iov_len != 0);
}

TEST_CASE("net gather_tx: every error has its own description", "[net]") {
    std::set<std::string> seen;
    for (TxError e : {TxError::None, TxError::DeviceWritable, TxError::TooShort, TxError::TooLong}) {
        const std::string s = to_string(e);
        CHECK_FALSE(s.empty());
        CHECK(s != "?");
        seen.insert(s);
    }
    CHECK(seen.size() == 4);
}

// ==========================================================================================
// parse_mac (§5.1.4: mac is the device's unicast address)

TEST_CASE("net parse_mac: six colon-separated hex pairs in either case", "[net]") {
    Mac m{};
    SECTION("lower case") {
        REQUIRE(parse_mac("06:00:ac:10:ff:0e", m));
        CHECK(m == Mac{0x06, 0x00, 0xac, 0x10, 0xff, 0x0e});
    }
    SECTION("upper case") {
        REQUIRE(parse_mac("AA:BB:CC:DD:EE:FF", m));
        CHECK(m == Mac{0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff});
    }
    SECTION("mixed case, including within a pair") {
        REQUIRE(parse_mac("aA:Bb:cC:09:fF:1a", m));
        CHECK(m == Mac{0xaa, 0xbb, 0xcc, 0x09, 0xff, 0x1a});
    }
    SECTION("every digit value in every position") {
        CHECK_FALSE(parse_mac("01:23:45:67:89:ab", m)); // 0x01 is multicast
        REQUIRE(parse_mac("10:32:54:76:98:BA", m));
        CHECK(m == Mac{0x10, 0x32, 0x54, 0x76, 0x98, 0xba});
        REQUIRE(parse_mac("DC:FE:ed:cb:a0:00", m));
        CHECK(m == Mac{0xdc, 0xfe, 0xed, 0xcb, 0xa0, 0x00});
    }
    SECTION("all zero") {
        REQUIRE(parse_mac("00:00:00:00:00:00", m));
        CHECK(m == Mac{});
    }
}

TEST_CASE("net parse_mac: the length must be exactly 17", "[net]") {
    Mac m{};
    for (const char* s : {"", "06:00:ac:10:ff:0", "06:00:ac:10:ff:0e0", "06:00:ac:10:ff:0e:", " 06:00:ac:10:ff:0e",
                          "06:00:ac:10:ff:0e ", "6:0:ac:10:ff:0e", "06:00:ac:10:ff", "0600ac10ff0e"}) {
        INFO(s);
        CHECK_FALSE(parse_mac(s, m));
    }
    // An embedded NUL makes the string 17 bytes long but is not a digit.
    CHECK_FALSE(parse_mac(std::string("06:00:ac:10:ff:0\0", 17), m));
}

TEST_CASE("net parse_mac: separators must be colons, at positions 2, 5, 8, 11 and 14", "[net]") {
    Mac m{};
    for (const char* s : {"06-00-ac-10-ff-0e", "06:00:ac:10:ff-0e", "06.00:ac:10:ff:0e", "06 00 ac 10 ff 0e",
                          "06:00:ac:10:ff;0e", "060:0a:c1:0f:f0:e", ":06:00:ac:10:ff:0", "06:00:ac:10:ff:::"}) {
        INFO(s);
        CHECK_FALSE(parse_mac(s, m));
    }
}

TEST_CASE("net parse_mac: only hexadecimal digits", "[net]") {
    Mac m{};
    // The characters just outside each digit range: '/' ':' '@' 'G' '`' 'g', and others.
    for (const char* s : {"0g:00:ac:10:ff:0e", "0G:00:ac:10:ff:0e", "06:00:ac:10:ff:0/", "06:00:ac:10:ff:0:",
                          "06:00:ac:10:ff:@e", "06:00:ac:10:ff:`e", "06:00:ac:10:ff:0x", "x6:00:ac:10:ff:0e",
                          "06:0 :ac:10:ff:0e", "06:00:ac:10:f+:0e", "-6:00:ac:10:ff:0e", "06:00:ac:10:ff:\xff" "e"}) {
        INFO(s);
        CHECK_FALSE(parse_mac(s, m));
    }
}

TEST_CASE("net parse_mac: multicast and broadcast addresses are refused", "[net]") {
    Mac m{};
    CHECK_FALSE(parse_mac("01:00:5e:00:00:01", m)); // IPv4 multicast
    CHECK_FALSE(parse_mac("33:33:00:00:00:01", m)); // IPv6 multicast
    CHECK_FALSE(parse_mac("ff:ff:ff:ff:ff:ff", m)); // broadcast
    CHECK_FALSE(parse_mac("FF:FF:FF:FF:FF:FF", m));
    CHECK(parse_mac("02:00:00:00:00:01", m)); // locally administered unicast
    CHECK(parse_mac("fe:ff:ff:ff:ff:ff", m));
    // Bit 0 of the first byte decides, for every first byte.
    for (unsigned b = 0; b < 256; ++b) {
        static const char* hex = "0123456789abcdef";
        std::string s = "00:11:22:33:44:55";
        s[0] = hex[b >> 4];
        s[1] = hex[b & 15];
        INFO(s);
        const bool ok = parse_mac(s, m);
        CHECK(ok == ((b & 1) == 0));
        if (ok) CHECK(m == Mac{static_cast<std::uint8_t>(b), 0x11, 0x22, 0x33, 0x44, 0x55});
    }
}

// ==========================================================================================
// writable_capacity / copy_to_chain (§2.7.4: device-writable buffers take what the device writes)

TEST_CASE("chain writable_capacity: the sum of the writable buffers", "[net][console]") {
    Chain empty;
    CHECK(writable_capacity(empty.span()) == 0);
    Chain c;
    c.writable(10).writable(0).writable(22).writable(1);
    CHECK(writable_capacity(c.span()) == 33);
    Chain z;
    z.writable(0).writable(0);
    CHECK(writable_capacity(z.span()) == 0);
    Chain big;
    big.huge(UINT32_MAX, true).huge(UINT32_MAX, true).huge(2, true);
    CHECK(writable_capacity(big.span()) == 2 * std::size_t{UINT32_MAX} + 2);
}

TEST_CASE("chain writable_capacity: a device-readable buffer anywhere makes the chain unusable", "[net][console]") {
    Chain first, middle, last, zero;
    first.readable(8).writable(100);
    middle.writable(100).readable(8).writable(100);
    last.writable(100).readable(1);
    zero.writable(100).readable(0);
    CHECK(writable_capacity(first.span()) == 0);
    CHECK(writable_capacity(middle.span()) == 0);
    CHECK(writable_capacity(last.span()) == 0);
    CHECK(writable_capacity(zero.span()) == 0);
}

TEST_CASE("chain copy_to_chain: data smaller than the chain fills it from the start", "[net][console]") {
    Chain c;
    c.writable(4).writable(0).writable(6).writable(8);
    const auto data = pattern(12);
    REQUIRE(copy_to_chain(c.span(), data) == 12);
    CHECK(c.bytes(0) == as_u8(data, 0, 4));
    CHECK(c.bytes(2) == as_u8(data, 4, 6));
    auto third = c.bytes(3);
    CHECK(std::vector<std::uint8_t>(third.begin(), third.begin() + 2) == as_u8(data, 10, 2));
    CHECK(std::vector<std::uint8_t>(third.begin() + 2, third.end()) == filled(6));
}

TEST_CASE("chain copy_to_chain: copying stops at the chain's capacity", "[net][console]") {
    Chain c;
    c.writable(3).writable(5);
    const auto data = pattern(100);
    REQUIRE(copy_to_chain(c.span(), data) == writable_capacity(c.span()));
    CHECK(c.bytes(0) == as_u8(data, 0, 3));
    CHECK(c.bytes(1) == as_u8(data, 3, 5));
}

TEST_CASE("chain copy_to_chain: exactly the capacity", "[net][console]") {
    Chain c;
    c.writable(7).writable(9);
    const auto data = pattern(16, 0x40);
    REQUIRE(copy_to_chain(c.span(), data) == 16);
    CHECK(c.bytes(0) == as_u8(data, 0, 7));
    CHECK(c.bytes(1) == as_u8(data, 7, 9));
}

TEST_CASE("chain copy_to_chain: empty data writes nothing", "[net][console]") {
    Chain c;
    c.writable(4).writable(4);
    CHECK(copy_to_chain(c.span(), {}) == 0);
    CHECK(c.bytes(0) == filled(4));
    CHECK(c.bytes(1) == filled(4));
    Chain none;
    const auto data = pattern(4);
    CHECK(copy_to_chain(none.span(), data) == 0);
}

TEST_CASE("chain copy_to_chain: stops at the first device-readable buffer", "[net][console]") {
    Chain c;
    c.writable(4).readable(4).writable(4);
    const auto data = pattern(12);
    CHECK(copy_to_chain(c.span(), data) == 4);
    CHECK(c.bytes(0) == as_u8(data, 0, 4));
    CHECK(c.bytes(1) == filled(4));
    CHECK(c.bytes(2) == filled(4));
    Chain r;
    r.readable(8);
    CHECK(copy_to_chain(r.span(), data) == 0);
    CHECK(r.bytes(0) == filled(8));
}

TEST_CASE("chain copy_to_chain: one byte per buffer over many buffers", "[net][console]") {
    Chain c;
    for (int i = 0; i < 64; ++i) c.writable(1);
    const auto data = pattern(64, 3);
    REQUIRE(copy_to_chain(c.span(), data) == 64);
    for (std::size_t i = 0; i < 64; ++i) CHECK(c.bytes(i) == as_u8(data, i, 1));
}
