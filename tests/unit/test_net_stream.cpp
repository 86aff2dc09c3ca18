// virtio-net's passt link (devices/virtio/net/backend.hpp): QEMU's stream netdev framing over a
// stream socket pair, read and written in pieces, and the device on it.

#include "devices/virtio/net/backend.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/net/request.hpp"
#include "virtio_driver.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::test;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes eth(std::size_t len, std::uint8_t seed) {
    Bytes b(len);
    for (std::size_t i = 0; i < len; ++i) b[i] = static_cast<std::uint8_t>(seed + i * 7);
    return b;
}

Bytes record(const Bytes& frame) {
    const auto n = static_cast<std::uint32_t>(frame.size());
    Bytes r{static_cast<std::uint8_t>(n >> 24), static_cast<std::uint8_t>(n >> 16), static_cast<std::uint8_t>(n >> 8), static_cast<std::uint8_t>(n)};
    r.insert(r.end(), frame.begin(), frame.end());
    return r;
}

struct StreamLink {
    UniqueFd peer; // passt's end
    std::unique_ptr<net::Tap> link;
    StreamLink() {
        int fds[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        peer.reset(fds[0]);
        link = net::Tap::adopt_stream(UniqueFd(fds[1]), "passt");
    }
    void send(const Bytes& b) const { REQUIRE(::write(peer.get(), b.data(), b.size()) == static_cast<ssize_t>(b.size())); }
    Bytes drain() const {
        Bytes out;
        std::uint8_t buf[65536];
        for (;;) {
            const ssize_t n = ::recv(peer.get(), buf, sizeof buf, MSG_DONTWAIT);
            if (n <= 0) break;
            out.insert(out.end(), buf, buf + n);
        }
        return out;
    }
    // read_frame: the frame without its header, or the errno.
    std::pair<Bytes, int> read() const {
        std::vector<std::byte> buf(net::MAX_FRAME_WITH_HDR);
        errno = 0;
        const ssize_t n = link->read_frame(buf);
        if (n < 0) return {{}, errno};
        REQUIRE(static_cast<std::size_t>(n) >= net::VNET_HDR_LEN);
        for (std::size_t i = 0; i < net::VNET_HDR_LEN; ++i) CHECK(buf[i] == std::byte{0});
        const auto* p = reinterpret_cast<const std::uint8_t*>(buf.data());
        return {Bytes(p + net::VNET_HDR_LEN, p + n), 0};
    }
};

} // namespace

TEST_CASE("passt link: records arriving in pieces and together become whole frames", "[net][passt]") {
    StreamLink s;
    const Bytes f1 = eth(60, 1), f2 = eth(1514, 2), f3 = eth(14, 3);
    const Bytes r1 = record(f1);
    CHECK(s.read().second == EAGAIN);
    for (std::size_t i = 0; i + 1 < r1.size(); ++i) { // all but its last byte, one at a time
        s.send(Bytes{r1[i]});
        CHECK(s.read().second == EAGAIN);
    }
    s.send(Bytes{r1.back()});
    CHECK(s.read() == std::pair<Bytes, int>{f1, 0});
    Bytes both = record(f2);
    const Bytes r3 = record(f3);
    both.insert(both.end(), r3.begin(), r3.end());
    s.send(both);
    CHECK(s.read() == std::pair<Bytes, int>{f2, 0});
    CHECK(s.read() == std::pair<Bytes, int>{f3, 0});
    CHECK(s.read().second == EAGAIN);
}

TEST_CASE("passt link: a length that cannot be a frame breaks the link for good", "[net][passt]") {
    StreamLink s;
    SECTION("shorter than an Ethernet header") { s.send(record(eth(13, 0))); }
    SECTION("longer than the largest frame") { s.send(Bytes{0, 1, 0, 0x0f}); } // 65551
    SECTION("zero") { s.send(Bytes{0, 0, 0, 0}); }
    CHECK(s.read().second == EPROTO);
    CHECK(s.read().second == EPROTO);
    CHECK(::send(s.peer.get(), "x", 1, MSG_NOSIGNAL) == -1); // shut down: passt sees the end
}

TEST_CASE("passt link: the peer closing is EPIPE, not a frame", "[net][passt]") {
    StreamLink s;
    s.send(Bytes{0, 0}); // half a length, then nothing more
    s.peer.reset();
    CHECK(s.read().second == EPIPE);
}

TEST_CASE("passt link: a frame goes out as one record without the virtio-net header", "[net][passt]") {
    StreamLink s;
    CHECK_FALSE(s.link->offloads());
    CHECK(s.link->set_offload(0));
    CHECK_FALSE(s.link->set_offload(net::TAP_F_CSUM));
    // The header split over two buffers and ending inside the third.
    Bytes hdr(net::VNET_HDR_LEN, 0xee);
    const Bytes f = eth(100, 9);
    Bytes a(hdr.begin(), hdr.begin() + 5), b(hdr.begin() + 5, hdr.end() - 1);
    Bytes c{hdr.back()};
    c.insert(c.end(), f.begin(), f.end());
    iovec iov[3] = {{a.data(), a.size()}, {b.data(), b.size()}, {c.data(), c.size()}};
    const std::size_t total = a.size() + b.size() + c.size();
    CHECK(s.link->write_frame(iov, 3, total) == static_cast<ssize_t>(total));
    CHECK(s.drain() == record(f));
}

TEST_CASE("passt link: a frame the socket takes in part is finished before the next", "[net][passt]") {
    StreamLink s;
    int small = 4096;
    REQUIRE(::setsockopt(s.link->fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
    Bytes expected;
    Bytes hdr(net::VNET_HDR_LEN, 0);
    std::size_t sent = 0;
    bool partial = false;
    for (std::uint8_t i = 0; i < 200 && !partial; ++i) {
        Bytes fr = eth(9000, i);
        Bytes buf = hdr;
        buf.insert(buf.end(), fr.begin(), fr.end());
        iovec v{buf.data(), buf.size()};
        const ssize_t n = s.link->write_frame(&v, 1, buf.size());
        if (n < 0) {
            REQUIRE(errno == EAGAIN); // full: nothing taken
            break;
        }
        const Bytes r = record(fr);
        expected.insert(expected.end(), r.begin(), r.end());
        ++sent;
        partial = s.link->pending();
    }
    REQUIRE(partial); // the test made the socket take a frame in part
    Bytes fr = eth(60, 0xaa), buf = hdr;
    buf.insert(buf.end(), fr.begin(), fr.end());
    iovec v{buf.data(), buf.size()};
    errno = 0;
    CHECK(s.link->write_frame(&v, 1, buf.size()) == -1); // the rest of the last frame goes first
    CHECK(errno == EAGAIN);
    Bytes got;
    for (int i = 0; i < 1000 && s.link->pending(); ++i) {
        const Bytes part = s.drain();
        got.insert(got.end(), part.begin(), part.end());
        (void)s.link->flush();
    }
    CHECK_FALSE(s.link->pending());
    const Bytes rest = s.drain();
    got.insert(got.end(), rest.begin(), rest.end());
    CHECK(s.link->write_frame(&v, 1, buf.size()) == static_cast<ssize_t>(buf.size()));
    const Bytes r = record(fr);
    expected.insert(expected.end(), r.begin(), r.end());
    const Bytes last = s.drain();
    got.insert(got.end(), last.begin(), last.end());
    CHECK(sent > 0);
    CHECK(got == expected);
}

TEST_CASE("passt link: virtio-net on it offers no offloads and carries frames both ways", "[net][passt]") {
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    StreamLink s;
    NetConfig cfg;
    cfg.iface_id = "eth0";
    cfg.host_dev_name = "passt";
    auto dev = std::make_shared<net::NetDevice>(mem, io, cfg, std::move(s.link));
    const std::uint64_t offered = dev->offered_features();
    for (unsigned f : {net::F_CSUM, net::F_GUEST_CSUM, net::F_HOST_TSO4, net::F_HOST_TSO6, net::F_GUEST_TSO4, net::F_GUEST_TSO6})
        CHECK((offered & (std::uint64_t{1} << f)) == 0);
    CHECK((offered & (std::uint64_t{1} << net::F_MRG_RXBUF)) != 0);
    VirtioDriver drv(mem, *dev, {{16, 0x1000, 0x2000, 0x3000}, {16, 0x4000, 0x5000, 0x6000}});
    drv.bring_up();

    const Bytes in = eth(1000, 4);
    const Chain rx = drv.post(net::NetDevice::RX, {writable(2048)});
    s.send(record(in));
    drv.notify(net::NetDevice::RX);
    REQUIRE(drv.rings(net::NetDevice::RX).used_idx() == 1);
    CHECK(drv.rings(net::NetDevice::RX).used_elem(0).second == net::VNET_HDR_LEN + in.size());
    Bytes got(net::VNET_HDR_LEN + in.size());
    REQUIRE(mem.read(GuestAddr(rx.addrs[0]), std::as_writable_bytes(std::span(got))));
    CHECK(Bytes(got.begin() + net::VNET_HDR_LEN, got.end()) == in);
    CHECK(got[net::NUM_BUFFERS_OFFSET] == 1); // num_buffers (MRG_RXBUF)

    Bytes out(net::VNET_HDR_LEN, 0);
    const Bytes f = eth(500, 5);
    out.insert(out.end(), f.begin(), f.end());
    (void)drv.post(net::NetDevice::TX, {readable(out)});
    drv.notify(net::NetDevice::TX);
    CHECK(drv.rings(net::NetDevice::TX).used_idx() == 1);
    CHECK(s.drain() == record(f));
    dev.reset();
}
