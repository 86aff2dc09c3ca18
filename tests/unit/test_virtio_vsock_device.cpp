// virtio-vsock device and its unix-socket muxer (devices/virtio/vsock): a fake guest driver
// (virtio_driver.hpp) exchanges packets (virtio 1.2 §5.10.6) with real host unix sockets,
// Firecracker's scheme (docs/vsock.md): host-initiated CONNECT, guest-initiated connects to
// <uds_path>_<port>, refused ports, credit-based flow control, shutdown and reset.

#include "devices/virtio/vsock/device.hpp"
#include "devices/virtio/vsock/request.hpp"
#include "virtio_driver.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fcntl.h>
#include <functional>
#include <map>
#include <string>
#include <sys/socket.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::test;
using namespace ember::virtio;
using namespace ember::virtio::vsock;

namespace {

constexpr std::uint64_t kCid = 42;

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/ember-vsock-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

sockaddr_un addr_of(const std::string& p) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, p.data(), p.size());
    return sa;
}

UniqueFd unix_connect(const std::string& p) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_un sa = addr_of(p);
    REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0);
    return fd;
}

UniqueFd unix_listen(const std::string& p) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const sockaddr_un sa = addr_of(p);
    REQUIRE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd.get(), 8) == 0);
    return fd;
}

// Reads what is there within ~1 s (non-blocking polls), up to `want` bytes.
std::string read_some(int fd, std::size_t want, const std::function<void()>& pump) {
    std::string out;
    for (int i = 0; i < 1000 && out.size() < want; ++i) {
        pump();
        char buf[4096];
        const ssize_t n = ::recv(fd, buf, std::min(sizeof buf, want - out.size()), MSG_DONTWAIT);
        if (n > 0) {
            out.append(buf, static_cast<std::size_t>(n));
            continue;
        }
        if (n == 0) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return out;
}

struct Packet {
    Header hdr;
    std::string data;
};

class Guest {
public:
    explicit Guest(const std::string& uds)
        : mem_(make_test_ram()), dev_(std::make_shared<VsockDevice>(mem_, io_, VsockConfig{std::nullopt, kCid, uds})),
          drv_(mem_, *dev_, {{64, 0x1000, 0x2000, 0x3000}, {64, 0x4000, 0x5000, 0x6000}, {16, 0x7000, 0x8000, 0x9000}}) {
        drv_.bring_up();
        for (int i = 0; i < 8; ++i) post_rx();
    }

    void post_rx() {
        const Chain c = drv_.post(VsockDevice::RX, {writable(HDR_LEN + 4096)});
        rx_addr_[c.head] = c.addrs[0];
        drv_.notify(VsockDevice::RX);
    }
    // Sends one packet on the txq.
    void send(Header h, const std::string& data = {}) {
        h.src_cid = kCid;
        h.dst_cid = HOST_CID;
        h.type = TYPE_STREAM;
        h.len = static_cast<std::uint32_t>(data.size());
        const auto raw = encode(h);
        std::vector<std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(raw.data()), reinterpret_cast<const std::uint8_t*>(raw.data()) + HDR_LEN);
        bytes.insert(bytes.end(), data.begin(), data.end());
        (void)drv_.post(VsockDevice::TX, {readable(bytes)});
        drv_.notify(VsockDevice::TX);
    }
    // Sends a packet with `n` payload bytes of `fill` from one reused guest buffer (the device
    // consumes tx chains synchronously on notify, so the buffer and descriptor are free again).
    void send_big(Header h, std::uint32_t n, char fill) {
        if (big_addr_ == 0) big_addr_ = drv_.alloc(HDR_LEN + MAX_PAYLOAD);
        h.src_cid = kCid;
        h.dst_cid = HOST_CID;
        h.type = TYPE_STREAM;
        h.len = n;
        const auto raw = encode(h);
        std::vector<std::byte> bytes(raw.begin(), raw.end());
        bytes.resize(HDR_LEN + n, static_cast<std::byte>(fill));
        REQUIRE(mem_.write(GuestAddr(big_addr_), std::span<const std::byte>(bytes)));
        constexpr std::uint16_t kDesc = 63;
        drv_.rings(VsockDevice::TX).set_desc(kDesc, big_addr_, static_cast<std::uint32_t>(bytes.size()));
        drv_.rings(VsockDevice::TX).publish(kDesc);
        drv_.notify(VsockDevice::TX);
    }
    // Posts an arbitrary tx chain (a hostile driver's) and returns the used length the device
    // gave it, or nullopt if the device did not consume it.
    std::optional<std::uint32_t> send_chain(const std::vector<Seg>& segs) {
        const std::uint16_t before = drv_.rings(VsockDevice::TX).used_idx();
        (void)drv_.post(VsockDevice::TX, segs);
        drv_.notify(VsockDevice::TX);
        if (drv_.rings(VsockDevice::TX).used_idx() == before) return std::nullopt;
        return drv_.rings(VsockDevice::TX).nth_used(before).second;
    }
    // Runs the event loop until a packet reaches the guest (or ~1 s); reposts the rx buffer.
    std::optional<Packet> recv() {
        for (int i = 0; i < 1000; ++i) {
            pump();
            if (drv_.rings(VsockDevice::RX).used_idx() != rx_seen_) {
                const auto [head, len] = drv_.rings(VsockDevice::RX).nth_used(rx_seen_++);
                REQUIRE(len >= HDR_LEN);
                const auto bytes = drv_.guest(rx_addr_.at(static_cast<std::uint16_t>(head)), len);
                Packet p;
                p.hdr = decode(std::span<const std::byte, HDR_LEN>(reinterpret_cast<const std::byte*>(bytes.data()), HDR_LEN));
                p.data.assign(bytes.begin() + HDR_LEN, bytes.end());
                REQUIRE(p.hdr.len == p.data.size());
                CHECK(p.hdr.src_cid == HOST_CID);
                CHECK(p.hdr.dst_cid == kCid);
                CHECK(p.hdr.type == TYPE_STREAM);
                post_rx();
                return p;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return std::nullopt;
    }
    // True if no packet arrives within ~50 ms.
    bool quiet() {
        for (int i = 0; i < 50; ++i) {
            pump();
            if (drv_.rings(VsockDevice::RX).used_idx() != rx_seen_) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return true;
    }
    void pump() {
        io_.poll();
        io_.restart();
        (void)drv_.serve_notifications();
    }
    VsockDevice& dev() { return *dev_; }

private:
    GuestMemory mem_;
    boost::asio::io_context io_;
    std::shared_ptr<VsockDevice> dev_;
    VirtioDriver drv_;
    std::map<std::uint16_t, std::uint64_t> rx_addr_;
    std::uint16_t rx_seen_ = 0;
    std::uint64_t big_addr_ = 0;
};

std::vector<std::uint8_t> raw_header(const Header& h) {
    const auto raw = encode(h);
    return std::vector<std::uint8_t>(reinterpret_cast<const std::uint8_t*>(raw.data()), reinterpret_cast<const std::uint8_t*>(raw.data()) + HDR_LEN);
}

Header hdr(Op op, std::uint32_t src_port, std::uint32_t dst_port, std::uint32_t buf_alloc = 65536, std::uint32_t fwd_cnt = 0) {
    Header h;
    h.op = static_cast<std::uint16_t>(op);
    h.src_port = src_port;
    h.dst_port = dst_port;
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    return h;
}

Op op_of(const Packet& p) { return static_cast<Op>(p.hdr.op); }

} // namespace

TEST_CASE("vsock device: configuration space holds the guest CID; reserved CIDs are refused", "[vsock]") {
    TempDir d;
    Guest g(d.path + "/v.sock");
    std::vector<std::uint8_t> cfg(8);
    g.dev().read_config(0, cfg);
    CHECK(cfg == std::vector<std::uint8_t>{42, 0, 0, 0, 0, 0, 0, 0});
    CHECK(g.dev().device_type() == 19);
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    CHECK_THROWS_AS(VsockDevice(mem, io, VsockConfig{std::nullopt, 2, d.path + "/w.sock"}), ConfigError);
    // The path is taken: bind fails with the path in the message.
    CHECK_THROWS_WITH(VsockDevice(mem, io, VsockConfig{std::nullopt, 5, d.path + "/v.sock"}), Catch::Contains("v.sock"));
}

TEST_CASE("vsock device: host-initiated CONNECT, data both ways, shutdown and RST", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd host = unix_connect(uds);
    const std::string line = "CONNECT 1234\n";
    REQUIRE(::write(host.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size()));

    auto req = g.recv();
    REQUIRE(req);
    CHECK(op_of(*req) == Op::Request);
    CHECK(req->hdr.dst_port == 1234);
    CHECK(req->hdr.src_port >= FIRST_LOCAL_PORT);
    CHECK(req->hdr.buf_alloc == CONN_BUF_ALLOC);
    const std::uint32_t local = req->hdr.src_port;

    g.send(hdr(Op::Response, 1234, local));
    const auto pump = [&] { g.pump(); };
    const std::string ok = "OK " + std::to_string(local) + "\n";
    CHECK(read_some(host.get(), ok.size(), pump) == ok);
    CHECK(g.dev().connection_count() == 1);

    // Host to guest.
    REQUIRE(::write(host.get(), "hello", 5) == 5);
    auto rw = g.recv();
    REQUIRE(rw);
    CHECK(op_of(*rw) == Op::Rw);
    CHECK(rw->hdr.src_port == local);
    CHECK(rw->hdr.dst_port == 1234);
    CHECK(rw->data == "hello");

    // Guest to host.
    g.send(hdr(Op::Rw, 1234, local), "world!");
    CHECK(read_some(host.get(), 6, pump) == "world!");

    // The host half-closes: the guest is told SHUTDOWN(SEND).
    REQUIRE(::shutdown(host.get(), SHUT_WR) == 0);
    auto sd = g.recv();
    REQUIRE(sd);
    CHECK(op_of(*sd) == Op::Shutdown);
    CHECK(sd->hdr.flags == SHUTDOWN_SEND);
    // The guest can still send; then it closes (SHUTDOWN both): RST ends the connection and
    // the host reads EOF after the last bytes.
    g.send(hdr(Op::Rw, 1234, local), "tail");
    Header bye = hdr(Op::Shutdown, 1234, local);
    bye.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(bye);
    CHECK(read_some(host.get(), 100, pump) == "tail");
    auto rst = g.recv();
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    CHECK(g.dev().connection_count() == 0);
}

TEST_CASE("vsock device: a CONNECT the guest refuses closes the host socket", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd host = unix_connect(uds);
    REQUIRE(::write(host.get(), "CONNECT 9\n", 10) == 10);
    auto req = g.recv();
    REQUIRE(req);
    g.send(hdr(Op::Rst, 9, req->hdr.src_port));
    const auto pump = [&] { g.pump(); };
    CHECK(read_some(host.get(), 10, pump).empty());
    char c;
    CHECK(::recv(host.get(), &c, 1, MSG_DONTWAIT) == 0); // EOF
    CHECK(g.dev().connection_count() == 0);
}

TEST_CASE("vsock device: malformed CONNECT lines close the host socket", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    for (const std::string& bad : std::vector<std::string>{"CONNECT\n", "CONNECT -1\n", "CONNECT 99999999999\n", "connect 5\n", "CONNECT 5 \n",
                                  std::string(40, 'x')}) {
        UniqueFd host = unix_connect(uds);
        REQUIRE(::write(host.get(), bad.data(), bad.size()) == static_cast<ssize_t>(bad.size()));
        const auto pump = [&] { g.pump(); };
        CHECK(read_some(host.get(), 10, pump).empty());
        char c;
        CHECK(::recv(host.get(), &c, 1, MSG_DONTWAIT) == 0);
        CHECK(g.quiet());
    }
    CHECK(g.dev().connection_count() == 0);
}

TEST_CASE("vsock device: guest-initiated connects reach <uds_path>_<port>; refused ports get RST", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd listener = unix_listen(uds + "_5000");

    g.send(hdr(Op::Request, 777, 5000));
    auto resp = g.recv();
    REQUIRE(resp);
    CHECK(op_of(*resp) == Op::Response);
    CHECK(resp->hdr.src_port == 5000);
    CHECK(resp->hdr.dst_port == 777);
    UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(host.valid());
    const auto pump = [&] { g.pump(); };
    g.send(hdr(Op::Rw, 777, 5000), "ping");
    CHECK(read_some(host.get(), 4, pump) == "ping");
    REQUIRE(::write(host.get(), "pong", 4) == 4);
    auto rw = g.recv();
    REQUIRE(rw);
    CHECK(rw->data == "pong");

    // Nothing listens on 5001.
    g.send(hdr(Op::Request, 778, 5001));
    auto rst = g.recv();
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    CHECK(rst->hdr.src_port == 5001);
    CHECK(rst->hdr.dst_port == 778);

    // Data for a connection that does not exist: RST; an RST for one: silence.
    g.send(hdr(Op::Rw, 779, 5000), "x");
    rst = g.recv();
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    g.send(hdr(Op::Rst, 779, 5000));
    CHECK(g.quiet());

    // The host closes: SHUTDOWN(SEND) to the guest; the guest's RST removes the connection.
    host.reset();
    auto sd = g.recv();
    REQUIRE(sd);
    CHECK(op_of(*sd) == Op::Shutdown);
    g.send(hdr(Op::Rst, 777, 5000));
    g.pump();
    CHECK(g.dev().connection_count() == 0);
}

TEST_CASE("vsock device: the host socket is read only as far as the guest's credit goes", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd listener = unix_listen(uds + "_6000");
    g.send(hdr(Op::Request, 900, 6000, /*buf_alloc=*/100));
    auto resp = g.recv();
    REQUIRE(resp);
    REQUIRE(op_of(*resp) == Op::Response);
    UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(host.valid());
    const std::string big(300, 'z');
    REQUIRE(::write(host.get(), big.data(), big.size()) == 300);
    std::size_t got = 0;
    while (auto p = g.recv()) {
        REQUIRE(op_of(*p) == Op::Rw);
        got += p->data.size();
        if (got >= 100) break;
    }
    CHECK(got == 100);
    CHECK(g.quiet()); // no credit: nothing more
    // The guest consumed 100 bytes: 100 more may come.
    g.send(hdr(Op::CreditUpdate, 900, 6000, 100, 100));
    got = 0;
    while (auto p = g.recv()) {
        REQUIRE(op_of(*p) == Op::Rw);
        got += p->data.size();
        if (got >= 100) break;
    }
    CHECK(got == 100);
    CHECK(g.quiet());
    // A CREDIT_REQUEST gets our counters: 0 bytes forwarded so far. (Its stale fwd_cnt of 100
    // leaves the guest no credit, so no data overtakes the answer.)
    g.send(hdr(Op::CreditRequest, 900, 6000, 100, 100));
    auto cu = g.recv();
    REQUIRE(cu);
    CHECK(op_of(*cu) == Op::CreditUpdate);
    CHECK(cu->hdr.buf_alloc == CONN_BUF_ALLOC);
    CHECK(cu->hdr.fwd_cnt == 0);
    // The rest once credit is back.
    g.send(hdr(Op::CreditUpdate, 900, 6000, 1000, 200));
    auto rest = g.recv();
    REQUIRE(rest);
    CHECK(rest->data.size() == 100);
}

TEST_CASE("vsock device: protocol violations reset the connection, not the device", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd listener = unix_listen(uds + "_7000");
    g.send(hdr(Op::Request, 1, 7000));
    REQUIRE(g.recv());
    UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(host.valid());
    SECTION("an unknown op") {
        g.send(hdr(static_cast<Op>(99), 1, 7000));
    }
    SECTION("a second REQUEST") {
        g.send(hdr(Op::Request, 1, 7000));
    }
    SECTION("data after SHUTDOWN(SEND)") {
        Header h = hdr(Op::Shutdown, 1, 7000);
        h.flags = SHUTDOWN_SEND;
        g.send(h);
        g.send(hdr(Op::Rw, 1, 7000), "late");
    }
    auto rst = g.recv();
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    const auto pump = [&] { g.pump(); };
    CHECK(read_some(host.get(), 10, pump).empty());
    CHECK(g.dev().connection_count() == 0);
    CHECK(g.dev().running());
}

TEST_CASE("vsock device: a device reset drops every connection", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd listener = unix_listen(uds + "_8000");
    for (std::uint32_t p = 1; p <= 3; ++p) {
        g.send(hdr(Op::Request, p, 8000));
        auto r = g.recv();
        REQUIRE(r);
        CHECK(op_of(*r) == Op::Response);
    }
    CHECK(g.dev().connection_count() == 3);
    {
        std::lock_guard lk(g.dev().mutex());
        g.dev().reset();
    }
    CHECK(g.dev().connection_count() == 0);
    UniqueFd host(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(host.valid());
    char c;
    CHECK(::recv(host.get(), &c, 1, 0) == 0);
}

TEST_CASE("vsock device: saved state restores into a device that tells the driver TRANSPORT_RESET", "[vsock][state]") {
    TempDir d;
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    auto dev = std::make_shared<VsockDevice>(mem, io, VsockConfig{std::nullopt, kCid, d.path + "/a.sock"});
    VirtioDriver drv(mem, *dev, {{64, 0x1000, 0x2000, 0x3000}, {64, 0x4000, 0x5000, 0x6000}, {16, 0x7000, 0x8000, 0x9000}});
    drv.bring_up();
    const Chain ev = drv.post(VsockDevice::EVT, {writable(8)});
    const std::uint8_t ff[4] = {0xff, 0xff, 0xff, 0xff};
    REQUIRE(mem.write(GuestAddr(ev.addrs[0]), std::as_bytes(std::span(ff))));
    drv.notify(VsockDevice::EVT);
    CHECK(drv.rings(VsockDevice::EVT).used_idx() == 0); // kept for an event
    const VsockState s = dev->save();
    CHECK(s.guest_cid == kCid);
    CHECK(s.virtio.queues.size() == 3);

    GuestMemory mem2 = clone_ram(mem);
    // Another guest_cid than the saved one is refused.
    CHECK_THROWS_AS(VsockDevice::restore(mem2, io, VsockConfig{std::nullopt, kCid + 1, d.path + "/b.sock"}, s), ConfigError);
    auto dev2 = VsockDevice::restore(mem2, io, VsockConfig{std::nullopt, kCid, d.path + "/c.sock"}, s);
    VirtioDriver drv2 = drv.moved_to(mem2, *dev2);
    REQUIRE(drv2.rings(VsockDevice::EVT).used_idx() == 1);
    const auto [head, len] = drv2.rings(VsockDevice::EVT).nth_used(0);
    CHECK(head == ev.head);
    CHECK(len == EVENT_LEN);
    CHECK(drv2.guest(ev.addrs[0], 4) == std::vector<std::uint8_t>{0, 0, 0, 0}); // id TRANSPORT_RESET
    CHECK(drv2.irq_raised());
    CHECK(dev2->save().virtio.queues[VsockDevice::EVT].next_used == 1);
}

namespace {

// A guest-initiated connection from guest port `gport` to host port `hport`, accepted on the
// host side by `listener`; returns the host end.
UniqueFd open_guest_conn(Guest& g, int listener, std::uint32_t gport, std::uint32_t hport) {
    g.send(hdr(Op::Request, gport, hport));
    auto resp = g.recv();
    REQUIRE(resp);
    REQUIRE(op_of(*resp) == Op::Response);
    UniqueFd host(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(host.valid());
    return host;
}

// A host-initiated connection to guest port `gport`, answered by the guest; returns the host
// end (its "OK" line read) and the local port.
std::pair<UniqueFd, std::uint32_t> open_host_conn(Guest& g, const std::string& uds, std::uint32_t gport) {
    UniqueFd host = unix_connect(uds);
    const std::string line = "CONNECT " + std::to_string(gport) + "\n";
    REQUIRE(::write(host.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size()));
    auto req = g.recv();
    REQUIRE(req);
    REQUIRE(op_of(*req) == Op::Request);
    const std::uint32_t local = req->hdr.src_port;
    g.send(hdr(Op::Response, gport, local));
    const std::string ok = "OK " + std::to_string(local) + "\n";
    REQUIRE(read_some(host.get(), ok.size(), [&] { g.pump(); }) == ok);
    return {std::move(host), local};
}

bool at_eof(int fd) {
    char c;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

} // namespace

TEST_CASE("vsock device: a socket bound by PUT /vsock serves clients that connected before the device existed", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    park_listener(uds, bind_uds(uds));
    CHECK_THROWS_WITH(bind_uds(uds), Catch::Contains("v.sock")); // the path is taken now
    UniqueFd early = unix_connect(uds);
    REQUIRE(::write(early.get(), "CONNECT 77\n", 11) == 11);
    Guest g(uds); // takes the parked socket instead of binding (which would fail)
    auto req = g.recv();
    REQUIRE(req);
    CHECK(op_of(*req) == Op::Request);
    CHECK(req->hdr.dst_port == 77);
    CHECK_FALSE(take_parked_listener(uds).valid());
}

TEST_CASE("vsock device: a CONNECT the guest never answers is reset after CONN_REQUEST_TIMEOUT", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    auto [answered, answered_port] = open_host_conn(g, uds, 10);
    UniqueFd host = unix_connect(uds);
    REQUIRE(::write(host.get(), "CONNECT 11\n", 11) == 11);
    auto req = g.recv();
    REQUIRE(req);
    REQUIRE(op_of(*req) == Op::Request);
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(g.quiet()); // nothing owed to the guest before the timeout
    std::optional<Packet> rst;
    while (!rst && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5)) rst = g.recv();
    const auto waited = std::chrono::steady_clock::now() - t0;
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    CHECK(rst->hdr.src_port == req->hdr.src_port);
    CHECK(rst->hdr.dst_port == 11);
    CHECK(waited >= CONN_REQUEST_TIMEOUT - std::chrono::milliseconds(200));
    CHECK(waited < CONN_REQUEST_TIMEOUT + std::chrono::milliseconds(1500));
    // The host end is closed without an "OK" line.
    CHECK(read_some(host.get(), 10, [&] { g.pump(); }).empty());
    CHECK(at_eof(host.get()));
    // The answered connection is untouched and still carries data.
    CHECK(g.dev().connection_count() == 1);
    REQUIRE(::write(answered.get(), "still", 5) == 5);
    auto rw = g.recv();
    REQUIRE(rw);
    CHECK(op_of(*rw) == Op::Rw);
    CHECK(rw->hdr.src_port == answered_port);
    CHECK(rw->data == "still");
}

TEST_CASE("vsock device: host clients sending junk instead of CONNECT are dropped; other connections go on", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    const auto pump = [&] { g.pump(); };
    auto [live, live_port] = open_host_conn(g, uds, 20);
    for (const std::string& junk : std::vector<std::string>{"GET / HTTP/1.1\r\n\r\n", std::string(4096, '\0'), "CONNECT 20x\n", "OK 5\n"}) {
        UniqueFd bad = unix_connect(uds);
        REQUIRE(::write(bad.get(), junk.data(), junk.size()) == static_cast<ssize_t>(junk.size()));
        CHECK(read_some(bad.get(), 10, pump).empty());
        CHECK(at_eof(bad.get()));
        CHECK(g.quiet()); // the guest hears nothing of it
    }
    { // a client that leaves halfway through its line
        UniqueFd half = unix_connect(uds);
        REQUIRE(::write(half.get(), "CONN", 4) == 4);
    }
    CHECK(g.quiet());
    CHECK(g.dev().connection_count() == 1);
    g.send(hdr(Op::Rw, 20, live_port), "guest->host");
    CHECK(read_some(live.get(), 11, pump) == "guest->host");
    REQUIRE(::write(live.get(), "host->guest", 11) == 11);
    auto rw = g.recv();
    REQUIRE(rw);
    CHECK(rw->data == "host->guest");
}

TEST_CASE("vsock device: a guest overrunning the credit it was given is reset; nothing is buffered past it", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    UniqueFd listener = unix_listen(uds + "_6100");
    UniqueFd host = open_guest_conn(g, listener.get(), 901, 6100); // never read until the end
    int sndbuf = 0;
    {
        UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        socklen_t sl = sizeof sndbuf;
        REQUIRE(::getsockopt(probe.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, &sl) == 0);
    }
    // The guest ignores our buf_alloc and keeps sending full packets. What Ember holds is at
    // most CONN_BUF_ALLOC; the host socket's own buffer takes the rest until it is full.
    const std::size_t bound = CONN_BUF_ALLOC + 2 * static_cast<std::size_t>(sndbuf) + 2 * MAX_PAYLOAD;
    std::size_t sent = 0;
    std::optional<Packet> rst;
    while (!rst && sent <= bound + MAX_PAYLOAD) {
        g.send_big(hdr(Op::Rw, 901, 6100), MAX_PAYLOAD, 'o');
        sent += MAX_PAYLOAD;
        while (!g.quiet()) {
            auto p = g.recv();
            REQUIRE(p);
            if (op_of(*p) == Op::Rst) rst = p;
            else CHECK(op_of(*p) == Op::CreditUpdate);
        }
    }
    REQUIRE(rst);
    CHECK(rst->hdr.src_port == 6100);
    CHECK(rst->hdr.dst_port == 901);
    CHECK(sent > CONN_BUF_ALLOC); // it did overrun
    CHECK(sent <= bound);
    CHECK(g.dev().connection_count() == 0);
    CHECK(g.dev().running());
    // The host end got a prefix of the stream (all 'o') and then EOF.
    const std::string got = read_some(host.get(), sent, [&] { g.pump(); });
    CHECK(got.size() < sent);
    CHECK(got.find_first_not_of('o') == std::string::npos);
    CHECK(at_eof(host.get()));
    // Ember goes on: a new connection works.
    UniqueFd again = open_guest_conn(g, listener.get(), 902, 6100);
    g.send(hdr(Op::Rw, 902, 6100), "fine");
    CHECK(read_some(again.get(), 4, [&] { g.pump(); }) == "fine");
}

TEST_CASE("vsock device: a hostile driver's packets are dropped or reset their connection; the device goes on", "[vsock]") {
    TempDir d;
    const std::string uds = d.path + "/v.sock";
    Guest g(uds);
    const auto pump = [&] { g.pump(); };
    UniqueFd listener = unix_listen(uds + "_7100");
    UniqueFd host = open_guest_conn(g, listener.get(), 5, 7100);
    Header h = hdr(Op::Rw, 5, 7100);
    h.src_cid = kCid;
    h.dst_cid = HOST_CID;
    h.type = TYPE_STREAM;

    // Malformed chains are consumed (used length 0) and deliver nothing (Firecracker's
    // process_tx drops a packet it cannot parse).
    std::vector<std::uint8_t> bytes = raw_header(h);
    bytes.resize(20);
    CHECK(g.send_chain({readable(bytes)}) == 0u); // shorter than a header
    h.len = MAX_PAYLOAD + 1;
    bytes = raw_header(h);
    bytes.resize(HDR_LEN + 16, 'x');
    CHECK(g.send_chain({readable(bytes)}) == 0u); // len above 64 KiB
    h.len = 100;
    bytes = raw_header(h);
    bytes.resize(HDR_LEN + 10, 'x');
    CHECK(g.send_chain({readable(bytes)}) == 0u); // len past the chain
    CHECK(g.send_chain({readable(raw_header(h)), readable(std::string(10, 'x'))}) == 0u); // same, split
    CHECK(g.send_chain({writable(HDR_LEN + 8)}) == 0u); // a device-writable tx buffer
    CHECK(g.send_chain({readable(raw_header(h)), writable(100)}) == 0u); // payload the device may write
    // Spoofed or misdirected addresses are dropped without a word.
    h.len = 5;
    Header spoof = h;
    spoof.src_cid = kCid + 1;
    bytes = raw_header(spoof);
    bytes.insert(bytes.end(), {'s', 'p', 'o', 'o', 'f'});
    CHECK(g.send_chain({readable(bytes)}) == 0u);
    Header elsewhere = h;
    elsewhere.dst_cid = 7;
    bytes = raw_header(elsewhere);
    bytes.insert(bytes.end(), {'a', 'w', 'a', 'y', '!'});
    CHECK(g.send_chain({readable(bytes)}) == 0u);
    CHECK(g.quiet());
    CHECK(g.dev().running());
    CHECK(g.dev().connection_count() == 1);
    // None of it reached the host: the next real bytes are the first it reads.
    g.send(hdr(Op::Rw, 5, 7100), "real");
    CHECK(read_some(host.get(), 100, pump) == "real");

    // A type other than stream on the live connection resets it.
    Header dgram = hdr(Op::Rw, 5, 7100);
    dgram.src_cid = kCid;
    dgram.dst_cid = HOST_CID;
    dgram.type = 2; // VIRTIO_VSOCK_TYPE_SEQPACKET
    CHECK(g.send_chain({readable(raw_header(dgram))}) == 0u);
    auto rst = g.recv();
    REQUIRE(rst);
    CHECK(op_of(*rst) == Op::Rst);
    CHECK(rst->hdr.src_port == 7100);
    CHECK(g.dev().connection_count() == 0);
    CHECK(read_some(host.get(), 10, pump).empty());
    CHECK(at_eof(host.get()));
    CHECK(g.dev().running());
}
