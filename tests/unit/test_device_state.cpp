// Saved device state (snapshots, issue 12): every device is driven into a non-trivial state,
// saved, restored into a fresh instance on a copy of guest memory and new host resources, and
// then fed the same inputs as the original; every observable must match (guest memory, used
// rings, register reads, bytes reaching the host, interrupts, the states saved again). States
// that no guest could have produced, or that do not fit guest memory, are refused with a
// ConfigError and never served.

#include "devices/legacy/boot_timer.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/queue.hpp"
#include "devices/virtio/spec.hpp"
#include "test_util.hpp"
#include "virtio_driver.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/console_output.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/irq.hpp"
#include "vmm/base/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <set>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <tuple>
#include <type_traits>
#include <unistd.h>
#include <vector>

using namespace ember;

// Saving is a copy: the fixed-size states are plain bytes (no pointers, nothing to follow).
static_assert(std::is_trivially_copyable_v<virtio::QueueState>);
static_assert(std::is_trivially_copyable_v<virtio::VirtioState>);
static_assert(std::is_trivially_copyable_v<SerialState>);
static_assert(std::is_trivially_copyable_v<I8042State>);
static_assert(std::is_trivially_copyable_v<BootTimerState>);

TEST_CASE("state: a byte FIFO keeps order across wrap-around and compares by content", "[state]") {
    ByteFifo<4> a, b;
    for (int v : {1, 2, 3}) REQUIRE(a.push_back(static_cast<std::uint8_t>(v)));
    CHECK(a.pop_front() == 1);
    CHECK(a.pop_front() == 2);
    for (int v : {4, 5, 6}) REQUIRE(a.push_back(static_cast<std::uint8_t>(v))); // wraps: 3 4 5 6 from index 2
    CHECK_FALSE(a.push_back(7));                               // full
    CHECK(a.size() == 4);
    for (int v : {3, 4, 5, 6}) REQUIRE(b.push_back(static_cast<std::uint8_t>(v))); // same bytes from index 0
    CHECK(a == b);
    CHECK(a.head != b.head);
    (void)b.pop_front();
    CHECK_FALSE(a == b);
    std::string order;
    while (!a.empty()) order += static_cast<char>('0' + a.pop_front());
    CHECK(order == "3456");
    ByteFifo<4> bad;
    bad.head = 4;
    CHECK_FALSE(bad.valid());
    bad.head = 0;
    bad.count = 5;
    CHECK_FALSE(bad.valid());
}
using namespace ember::virtio;
using namespace ember::test;
using Bytes = std::vector<std::uint8_t>;

namespace {

Bytes pattern(std::size_t n, std::uint8_t seed) {
    Bytes v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed + i * 7 + i / 251);
    return v;
}

// A memfd with contents, to stand for a disk image or a host output file.
class MemFd {
public:
    explicit MemFd(const Bytes& bytes = {}) : fd_(::memfd_create("ember-state-test", MFD_CLOEXEC)) {
        REQUIRE(fd_.get() >= 0);
        if (!bytes.empty()) REQUIRE(::pwrite(fd_.get(), bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    }
    UniqueFd dup() const {
        const int fd = ::dup(fd_.get());
        REQUIRE(fd >= 0);
        return UniqueFd(fd);
    }
    Bytes contents() const {
        const off_t n = ::lseek(fd_.get(), 0, SEEK_END);
        REQUIRE(n >= 0);
        Bytes out(static_cast<std::size_t>(n));
        if (n > 0) REQUIRE(::pread(fd_.get(), out.data(), out.size(), 0) == n);
        return out;
    }

private:
    UniqueFd fd_;
};

class CountingIrq final : public IrqLine {
public:
    void trigger() noexcept override { ++count; }
    unsigned count = 0;
};

// One side of a legacy-device comparison: the device, its interrupt line and byte-wide port access.
template <class Device>
struct PortSide {
    CountingIrq irq;
    std::unique_ptr<Device> dev;
    void wr(std::uint64_t off, std::uint8_t v) {
        const std::uint8_t b[1] = {v};
        dev->write(off, b);
    }
    std::uint8_t rd(std::uint64_t off) {
        std::uint8_t b[1] = {0};
        dev->read(off, b);
        return b[0];
    }
};

// ------------------------------------------------------------------------------------------
// Queue

// What a queue does with the same driver actions, as a transcript to compare.
std::vector<std::string> queue_steps(DriverRings& d, Queue& q) {
    std::vector<std::string> t;
    auto pop = [&] {
        const Queue::PopResult r = q.pop();
        std::string s = "pop " + std::to_string(static_cast<int>(r.status)) + " head " + std::to_string(r.head);
        for (const auto& desc : r.descs)
            s += " [" + std::to_string(desc.addr.raw()) + "," + std::to_string(desc.len) + "," + std::to_string(desc.device_writable) + "]";
        t.push_back(s);
    };
    pop();                                  // the chain published before the save
    pop();                                  // nothing more
    q.add_used(2, 5);
    q.add_used(3, 7);
    t.push_back("irq " + std::to_string(q.needs_interrupt()));
    t.push_back("armed " + std::to_string(q.enable_notification()));
    d.set_desc(4, kDataAddr + 0x400, 64, desc_flag::WRITE);
    d.publish(4);
    pop();
    q.add_used(4, 64);
    t.push_back("irq " + std::to_string(q.needs_interrupt()));
    d.set_used_event(5);
    d.set_desc(5, kDataAddr + 0x500, 8);
    d.publish(5);
    pop();
    q.add_used(5, 0);
    t.push_back("irq " + std::to_string(q.needs_interrupt()));
    t.push_back("used " + std::to_string(d.used_idx()) + " event " + std::to_string(d.avail_event()));
    return t;
}

// A queue with EVENT_IDX and INDIRECT_DESC that took 3 of 4 chains and returned 2.
struct MidFlightQueue {
    GuestMemory mem = make_test_ram();
    DriverRings d{mem, 16};
    Queue q{256};
    MidFlightQueue() {
        d.program(q);
        REQUIRE(q.activate(mem, true, true).empty());
        for (std::uint16_t i = 0; i < 4; ++i) {
            d.set_desc(i, kDataAddr + 0x100 * std::uint64_t{i}, 16u + i, i % 2 ? desc_flag::WRITE : std::uint16_t{0});
            d.publish(i);
        }
        for (int i = 0; i < 3; ++i) REQUIRE(q.pop().status == Queue::PopStatus::Chain);
        q.add_used(0, 1);
        q.add_used(1, 2);
        REQUIRE(q.needs_interrupt());
        d.set_used_event(2);
    }
};

// ------------------------------------------------------------------------------------------
// virtio-blk

constexpr auto IN = static_cast<std::uint32_t>(block::RequestType::In);
constexpr auto OUT = static_cast<std::uint32_t>(block::RequestType::Out);
const std::vector<VirtioDriver::Layout> kOneQueue{{16, kDescAddr, kAvailAddr, kUsedAddr}};
const std::vector<VirtioDriver::Layout> kTwoQueues{{16, 0x1000, 0x2000, 0x3000}, {16, 0x4000, 0x5000, 0x6000}};

DriveConfig drive(block::IoEngine engine) {
    DriveConfig cfg;
    cfg.drive_id = "state0";
    cfg.path_on_host = "/memfd";
    cfg.io_engine = engine;
    return cfg;
}

Chain post_blk(VirtioDriver& drv, std::uint32_t type, std::uint64_t sector, std::uint32_t len, std::uint8_t seed) {
    Bytes hdr(16, 0);
    std::memcpy(hdr.data(), &type, 4);
    std::memcpy(hdr.data() + 8, &sector, 8);
    std::vector<Seg> segs{readable(hdr)};
    if (type == OUT) segs.push_back(readable(pattern(len, seed)));
    else if (len) segs.push_back(writable(len));
    segs.push_back(Seg{1, true, {0xff}});
    return drv.post(0, segs);
}

// ------------------------------------------------------------------------------------------
// virtio-net over a SOCK_SEQPACKET socket pair standing for the TAP.

struct SocketTap {
    UniqueFd host;
    std::unique_ptr<net::Tap> tap;
    SocketTap() {
        int fds[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
        host.reset(fds[0]);
        tap = net::Tap::adopt(UniqueFd(fds[1]), "sock0");
    }
    void send(const Bytes& frame) const { REQUIRE(::write(host.get(), frame.data(), frame.size()) == static_cast<ssize_t>(frame.size())); }
    std::vector<Bytes> received() const {
        std::vector<Bytes> out;
        for (;;) {
            Bytes b(70000);
            const ssize_t n = ::read(host.get(), b.data(), b.size());
            if (n <= 0) break;
            b.resize(static_cast<std::size_t>(n));
            out.push_back(std::move(b));
        }
        return out;
    }
};

Bytes frame(std::size_t payload, std::uint8_t seed) {
    Bytes f(net::VNET_HDR_LEN, 0); // no offloads: an all-zero virtio_net_hdr_v1
    const Bytes p = pattern(14 + payload, seed);
    f.insert(f.end(), p.begin(), p.end());
    return f;
}

NetConfig net_config() {
    NetConfig cfg;
    cfg.iface_id = "eth0";
    cfg.host_dev_name = "sock0";
    return cfg;
}
// Socket "TAPs" take no offloads: the driver does not ask for any (§5.1.6.4).
constexpr std::uint64_t kNoGuestOffloads = bit(net::F_GUEST_CSUM) | bit(net::F_GUEST_TSO4) | bit(net::F_GUEST_TSO6);

} // namespace

// ==========================================================================================
// Queue

TEST_CASE("state: a queue restored mid-flight serves the next chains as the original does", "[state][virtio]") {
    MidFlightQueue a;
    const QueueState s = a.q.state();
    CHECK(s.active);
    CHECK(s.next_avail == 3);
    CHECK(s.next_used == 2);
    CHECK(s.signalled_used_valid);
    CHECK(s.event_idx);
    CHECK(s.indirect);

    GuestMemory mem = clone_ram(a.mem);
    Queue q(256);
    q.restore(s, mem);
    CHECK(q.active());
    CHECK(q.state() == s);
    CHECK(q.pending() == 1);
    DriverRings d(mem, 16);
    d.set_avail_idx(a.d.avail_idx());

    const auto want = queue_steps(a.d, a.q);
    const auto got = queue_steps(d, q);
    CHECK(got == want);
    CHECK(q.state() == a.q.state());
    CHECK(same_ram(a.mem, mem));
}

TEST_CASE("state: an inactive queue restores its programming and is activated later", "[state][virtio]") {
    GuestMemory mem = make_test_ram();
    DriverRings d(mem, 8);
    Queue a(256);
    d.program(a); // programmed, not yet DRIVER_OK
    Queue b(256);
    b.restore(a.state(), mem);
    CHECK_FALSE(b.active());
    CHECK(b.state() == a.state());
    REQUIRE(b.activate(mem, false, false).empty());
    d.set_desc(0, kDataAddr, 4);
    d.publish(0);
    CHECK(b.pop().status == Queue::PopStatus::Chain);
}

TEST_CASE("state: a queue state that does not fit guest memory or the rings is refused", "[state][virtio]") {
    MidFlightQueue a;
    QueueState s = a.q.state();
    std::string why;
    std::uint16_t max = 256;
    SECTION("descriptor table outside RAM") {
        s.desc_addr = GuestAddr(kRamBytes);
        why = "descriptor table is outside guest RAM";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("used ring running past the end of RAM") {
        s.used_addr = GuestAddr(kRamBytes - 8);
        why = "used ring is outside guest RAM";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("available ring at the top of the address space") {
        s.avail_addr = GuestAddr(UINT64_MAX - 1);
        why = "available ring is outside guest RAM";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("size not a power of two") {
        s.size = 12;
        why = "not a power of two";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("size above the maximum") {
        s.size = 512;
        why = "not a power of two up to 256";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("misaligned descriptor table") {
        s.desc_addr = GuestAddr(kDescAddr + 8);
        why = "16-byte aligned";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("next_avail far ahead of the available ring") {
        s.next_avail = static_cast<std::uint16_t>(s.next_avail + 1000);
        s.next_used = static_cast<std::uint16_t>(s.next_used + 1000);
        why = "more than the queue size past next_avail";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("more chains taken than the queue holds") {
        s.next_used = static_cast<std::uint16_t>(s.next_used - 40);
        why = "more than the queue size past next_used";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("next_used that is not the used index in guest memory") {
        s.next_used = static_cast<std::uint16_t>(s.next_used - 1);
        why = "differs from next_used";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("another maximum size") {
        max = 128;
        why = "restored into one of 128";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("an inactive queue that consumed chains") {
        s.active = false;
        why = "inactive queue with chains consumed";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    SECTION("an active queue that is not ready") {
        s.ready = false;
        why = "not ready";
        CHECK((s != a.q.state() || max != 256)); // the case changes something
    }
    GuestMemory mem = clone_ram(a.mem);
    Queue q(max);
    CHECK_CONFIG_ERROR(q.restore(s, mem), why);
    CHECK_FALSE(q.active());
    CHECK(q.pop().status == Queue::PopStatus::Empty);
    q.add_used(0, 1); // inactive: writes nothing
    CHECK(same_ram(a.mem, mem));
}

// ==========================================================================================
// virtio-blk

TEST_CASE("state: virtio-blk saved with requests in flight and restored behaves as the original", "[state][block]") {
    const block::IoEngine engine = GENERATE(block::IoEngine::Sync, block::IoEngine::Async);
    INFO("engine " << (engine == block::IoEngine::Sync ? "Sync" : "Async"));
    constexpr std::size_t kDisk = 64 * 1024;
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    MemFd image(pattern(kDisk, 3));
    auto dev = std::make_shared<block::BlockDevice>(mem, io, drive(engine), image.dup(), kDisk);
    VirtioDriver drv(mem, *dev, kOneQueue);
    drv.bring_up();

    const Chain w1 = post_blk(drv, OUT, 0, 1024, 10);
    const Chain r1 = post_blk(drv, IN, 8, 2048, 0);
    drv.notify(0);
    dev->quiesce();
    REQUIRE(drv.rings(0).used_idx() == 2);
    CHECK(drv.guest(w1.addrs[2], 1)[0] == block::S_OK);
    const Bytes disk = pattern(kDisk, 3);
    CHECK(drv.guest(r1.addrs[1], 2048) == Bytes(disk.begin() + 8 * 512, disk.begin() + 8 * 512 + 2048));
    // Two more started (in flight with the Async engine), one published without a notification.
    const Chain w2 = post_blk(drv, OUT, 16, 4096, 20);
    const Chain r2 = post_blk(drv, IN, 0, 1024, 0);
    drv.notify(0);
    (void)post_blk(drv, OUT, 32, 512, 30);

    const block::BlockState s = dev->save();
    // save() drained the requests in flight: they are complete and returned.
    CHECK(drv.rings(0).used_idx() == 4);
    CHECK(drv.guest(w2.addrs[2], 1)[0] == block::S_OK);
    CHECK(drv.guest(r2.addrs[1], 1024) == pattern(1024, 10));
    CHECK(s.disk_bytes == kDisk);
    REQUIRE(s.virtio.queues.size() == 1);
    CHECK(s.virtio.queues[0].active);
    CHECK(s.virtio.queues[0].next_avail == 4);
    CHECK(s.virtio.queues[0].next_used == 4);
    CHECK(s.virtio.queues[0].event_idx);
    CHECK(s.virtio.virtio.status == kRunning);
    CHECK((s.virtio.interrupt_status & INT_USED_RING) != 0);
    CHECK(dev->save() == s); // saving again changes nothing

    GuestMemory mem2 = clone_ram(mem);
    boost::asio::io_context io2;
    MemFd image2(image.contents());
    auto dev2 = block::BlockDevice::restore(mem2, io2, drive(engine), image2.dup(), kDisk, s);
    VirtioDriver drv2 = drv.moved_to(mem2, *dev2);
    CHECK(drv2.state() == s.virtio);
    CHECK(dev2->interrupt_status() == dev->interrupt_status());
    CHECK(drv2.irq_raised()); // the pending interrupt is raised again on the new line
    // The restored device notifies its queue once, for notifications lost with the old eventfds;
    // the original is notified as well, and both serve the chain published before the save.
    CHECK(drv2.serve_notifications() == std::vector<std::size_t>{0});
    drv.notify(0);
    dev->quiesce();
    dev2->quiesce();
    CHECK(drv.rings(0).used_idx() == 5);

    // The same next requests to both.
    for (auto* d : {&drv, &drv2}) {
        (void)post_blk(*d, OUT, 40, 2048, 40);
        (void)post_blk(*d, IN, 16, 4096, 0);  // w2's data
        (void)post_blk(*d, 99, 0, 0, 0);      // unsupported
        (void)post_blk(*d, IN, 200, 512, 0);  // beyond the disk
        d->notify(0);
    }
    dev->quiesce();
    dev2->quiesce();
    for (auto* i : {&io, &io2}) {
        i->restart();
        i->poll(); // late completion events find nothing
    }
    CHECK(drv2.rings(0).used_idx() == 9);
    CHECK(same_ram(mem, mem2));
    CHECK(image2.contents() == image.contents());
    CHECK(drv2.state() == drv.state());
    CHECK(dev2->interrupt_status() == dev->interrupt_status());
    CHECK(dev2->save() == dev->save());
}

TEST_CASE("state: a virtio-blk state that does not fit the drive or guest memory is refused", "[state][block]") {
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    MemFd image(pattern(8192, 1));
    auto dev = std::make_shared<block::BlockDevice>(mem, io, drive(block::IoEngine::Sync), image.dup(), 8192);
    VirtioDriver drv(mem, *dev, kOneQueue);
    drv.bring_up();
    (void)post_blk(drv, IN, 0, 512, 0);
    drv.notify(0);
    const block::BlockState saved = dev->save();
    block::BlockState s = saved;
    std::uint64_t size = 8192;
    std::string why;
    SECTION("queue outside guest RAM") {
        s.virtio.queues[0].used_addr = GuestAddr(kRamBytes + 0x1000);
        why = "queue 0: used ring is outside guest RAM";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("queue size not a power of two") {
        s.virtio.queues[0].size = 3;
        why = "queue 0: queue size 3";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("next_avail far ahead") {
        s.virtio.queues[0].next_avail = 5000;
        why = "queue 0:";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("a queue too many") {
        s.virtio.queues.push_back(s.virtio.queues[0]);
        why = "2 queues saved, the device has 1";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("a feature the drive does not offer (FLUSH on an Unsafe cache)") {
        s.virtio.virtio.acked_features |= bit(block::F_FLUSH);
        why = "negotiated features";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("features without VERSION_1") {
        s.virtio.virtio.acked_features &= ~bit(feature::VERSION_1);
        why = "negotiated features";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("DRIVER_OK without FEATURES_OK") {
        s.virtio.virtio.status = status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK;
        why = "not one a driver can reach";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("an active queue before DRIVER_OK") {
        s.virtio.virtio.status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        why = "active before DRIVER_OK";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("ring features other than the negotiated ones") {
        s.virtio.queues[0].event_idx = false;
        why = "ring features differ";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("unknown interrupt bits") {
        s.virtio.interrupt_status = 0x80;
        why = "unknown interrupt status bits";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    SECTION("an image of another size") {
        size = 4096;
        why = "the image has 4096 bytes, the saved drive had 8192";
        CHECK((s != saved || size != saved.disk_bytes));
    }
    GuestMemory mem2 = clone_ram(mem);
    boost::asio::io_context io2;
    CHECK_CONFIG_ERROR(block::BlockDevice::restore(mem2, io2, drive(block::IoEngine::Sync), image.dup(), size, s), why);
    CHECK(same_ram(mem, mem2)); // nothing was served
}

// ==========================================================================================
// virtio-net

TEST_CASE("state: virtio-net restored on a new TAP behaves as the original", "[state][net]") {
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    SocketTap tap;
    auto dev = std::make_shared<net::NetDevice>(mem, io, net_config(), std::move(tap.tap));
    VirtioDriver drv(mem, *dev, kTwoQueues);
    drv.bring_up(kNoGuestOffloads);
    REQUIRE(dev->running());

    for (int i = 0; i < 3; ++i) (void)drv.post(net::NetDevice::RX, {writable(2048)});
    tap.send(frame(100, 1));
    drv.notify(net::NetDevice::RX);
    REQUIRE(drv.rings(net::NetDevice::RX).used_idx() == 1);
    const Bytes t1 = frame(60, 2), t2 = frame(300, 3);
    (void)drv.post(net::NetDevice::TX, {readable(t1)});
    (void)drv.post(net::NetDevice::TX, {readable(Bytes(t2.begin(), t2.begin() + 20)), readable(Bytes(t2.begin() + 20, t2.end()))});
    drv.notify(net::NetDevice::TX);
    CHECK(tap.received() == std::vector<Bytes>{t1, t2});

    const net::NetState s = dev->save();
    CHECK(s.virtio.queues[net::NetDevice::RX].next_used == 1);
    CHECK(s.virtio.queues[net::NetDevice::TX].next_used == 2);
    CHECK((s.virtio.interrupt_status & INT_USED_RING) != 0);

    GuestMemory mem2 = clone_ram(mem);
    boost::asio::io_context io2;
    SocketTap tap2;
    auto dev2 = net::NetDevice::restore(mem2, io2, net_config(), std::move(tap2.tap), s);
    VirtioDriver drv2 = drv.moved_to(mem2, *dev2);
    CHECK(drv2.state() == s.virtio);
    CHECK(drv2.irq_raised());
    CHECK(drv2.serve_notifications() == std::vector<std::size_t>{net::NetDevice::RX, net::NetDevice::TX});
    drv.notify(net::NetDevice::RX);
    drv.notify(net::NetDevice::TX);

    // The same frames both ways.
    const Bytes r2 = frame(1500, 4), r3 = frame(40, 5), t3 = frame(80, 6);
    for (auto [d, t] : {std::tuple{&drv, &tap}, std::tuple{&drv2, &tap2}}) {
        t->send(r2);
        t->send(r3);
        d->notify(net::NetDevice::RX);
        (void)d->post(net::NetDevice::TX, {readable(t3)});
        d->notify(net::NetDevice::TX);
        (void)d->post(net::NetDevice::RX, {writable(2048)});
        d->notify(net::NetDevice::RX);
    }
    CHECK(drv.rings(net::NetDevice::RX).used_idx() == 3);
    CHECK(tap.received() == std::vector<Bytes>{t3});
    CHECK(tap2.received() == std::vector<Bytes>{t3});
    CHECK(same_ram(mem, mem2));
    CHECK(drv2.state() == drv.state());
    CHECK(dev2->interrupt_status() == dev->interrupt_status());
    CHECK(dev2->save() == dev->save());
    dev.reset();
    dev2.reset();
}

// ==========================================================================================
// virtio-console

TEST_CASE("state: virtio-console restored behaves as the original", "[state][console]") {
    using console::ConsoleDevice;
    using console::ConsoleSize;
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    MemFd out_file;
    auto out = std::make_shared<ConsoleOutput>(io, out_file.dup());
    auto dev = std::make_shared<ConsoleDevice>(mem, out, ConsoleSize{80, 25});
    unsigned rx_space = 0;
    dev->set_rx_space_callback([&] { ++rx_space; });
    VirtioDriver drv(mem, *dev, kTwoQueues);
    drv.bring_up();
    auto input = [](ConsoleDevice& d, const std::string& s) {
        std::lock_guard lk(d.mutex());
        return d.enqueue_input(std::span(reinterpret_cast<const std::uint8_t*>(s.data()), s.size()));
    };

    (void)drv.post(ConsoleDevice::TX, {readable("hello ")});
    drv.notify(ConsoleDevice::TX); // announces the size, writes the output
    (void)drv.post(ConsoleDevice::RX, {writable(8)});
    CHECK(input(*dev, "abc") == 3);
    CHECK(input(*dev, "more") == 0); // no receive buffer left: input waits
    CHECK(out_file.contents() == Bytes{'h', 'e', 'l', 'l', 'o', ' '});

    const console::ConsoleState s = dev->save();
    CHECK(s.size == ConsoleSize{80, 25});
    CHECK(s.size_announced);
    CHECK(s.input_waiting);
    CHECK(s.virtio.interrupt_status == (INT_USED_RING | INT_CONFIG));
    CHECK(s.virtio.virtio.config_generation == 1);

    SECTION("same host, same inputs") {
        GuestMemory mem2 = clone_ram(mem);
        boost::asio::io_context io2;
        MemFd out_file2;
        auto dev2 = ConsoleDevice::restore(mem2, std::make_shared<ConsoleOutput>(io2, out_file2.dup()), ConsoleSize{80, 25}, s);
        unsigned rx_space2 = 0;
        dev2->set_rx_space_callback([&] { ++rx_space2; });
        VirtioDriver drv2 = drv.moved_to(mem2, *dev2);
        CHECK(drv2.state() == s.virtio);
        CHECK(dev2->save() == s);
        CHECK(drv2.irq_raised());
        CHECK(drv2.serve_notifications() == std::vector<std::size_t>{ConsoleDevice::RX, ConsoleDevice::TX});
        drv.notify(ConsoleDevice::RX);
        drv.notify(ConsoleDevice::TX);
        // Input was waiting: the first receive notification tells the reader, once, on both.
        CHECK(rx_space == 1);
        CHECK(rx_space2 == 1);

        for (auto [d, v] : {std::tuple{&drv, dev.get()}, std::tuple{&drv2, dev2.get()}}) {
            (void)d->post(ConsoleDevice::RX, {writable(3), writable(16)});
            d->notify(ConsoleDevice::RX);
            CHECK(input(*v, "more input") == 10);
            (void)d->post(ConsoleDevice::TX, {readable("world"), readable("!\n")});
            d->notify(ConsoleDevice::TX);
            std::lock_guard lk(v->mutex());
            v->resize(ConsoleSize{100, 30});
        }
        CHECK(out_file.contents() == Bytes{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '!', '\n'});
        CHECK(out_file2.contents() == Bytes{'w', 'o', 'r', 'l', 'd', '!', '\n'});
        CHECK(same_ram(mem, mem2));
        CHECK(drv2.state() == drv.state());
        CHECK(dev2->save() == dev->save());
        CHECK(dev2->interrupt_status() == dev->interrupt_status());
    }
    SECTION("a host terminal of another size is announced; none keeps the saved size") {
        GuestMemory mem2 = clone_ram(mem);
        boost::asio::io_context io2;
        MemFd out_file2;
        auto resized = ConsoleDevice::restore(mem2, std::make_shared<ConsoleOutput>(io2, out_file2.dup()), ConsoleSize{120, 40}, s);
        CHECK(resized->state().config_generation == 2);
        std::uint8_t cfg[4] = {};
        resized->read_config(0, cfg);
        CHECK(cfg[0] == 120);
        CHECK(cfg[2] == 40);
        auto plain = ConsoleDevice::restore(mem2, std::make_shared<ConsoleOutput>(io2, out_file2.dup()), std::nullopt, s);
        CHECK(plain->state().config_generation == 1);
        CHECK((plain->device_features() & bit(console::F_SIZE)) != 0); // still offered, as when saved
        plain->read_config(0, cfg);
        CHECK(cfg[0] == 80);
    }
    SECTION("a saved size the device did not offer F_SIZE for is refused") {
        console::ConsoleState bad = s;
        bad.size.reset(); // F_SIZE negotiated, but a device without a size does not offer it
        GuestMemory mem2 = clone_ram(mem);
        boost::asio::io_context io2;
        MemFd out_file2;
        CHECK_CONFIG_ERROR(ConsoleDevice::restore(mem2, std::make_shared<ConsoleOutput>(io2, out_file2.dup()), std::nullopt, bad),
                           "negotiated features");
    }
}

// ==========================================================================================
// Legacy devices

TEST_CASE("state: the UART restored mid-transfer behaves as the original and raises its pending interrupt", "[state][serial]") {
    constexpr std::uint64_t THR = 0, RBR = 0, IER = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, SCR = 7;
    struct Side : PortSide<Serial> {
        std::string out;
        Serial::Sink sink() {
            return [this](std::span<const std::uint8_t> b) {
                out.append(b.begin(), b.end());
                return true;
            };
        }
    };
    Side a;
    a.dev = std::make_unique<Serial>(a.irq, a.sink());
    a.wr(LCR, 0x80);
    a.wr(0, 0x01); // DLL: 115200 baud
    a.wr(LCR, 0x03);
    a.wr(FCR, 0x01);
    a.wr(MCR, 0x0b);
    a.wr(SCR, 0x5a);
    a.wr(IER, 0x03); // RDA and THRE
    const std::string in = "partly full";
    CHECK(a.dev->enqueue_input(std::span(reinterpret_cast<const std::uint8_t*>(in.data()), in.size())) == in.size());
    CHECK(a.rd(RBR) == 'p');
    const SerialState s = a.dev->save();
    CHECK(s.rx.size() == in.size() - 1);
    CHECK(s.ier == 0x03);
    CHECK(s.thr_empty_pending);

    Side b;
    b.dev = std::make_unique<Serial>(b.irq, b.sink(), s);
    CHECK(b.irq.count == 1); // received data pending: the edge is raised on the new line
    CHECK(b.dev->save() == s);
    const unsigned before = a.irq.count;
    for (Side* x : {&a, &b}) {
        std::string got;
        got.push_back(static_cast<char>(x->rd(IIR)));
        while (x->rd(LSR) & 0x01) got.push_back(static_cast<char>(x->rd(RBR)));
        got.push_back(static_cast<char>(x->rd(IIR))); // THRE now reported, and acknowledged
        got.push_back(static_cast<char>(x->rd(IIR)));
        x->wr(THR, 'o');
        x->wr(THR, 'k');
        got.push_back(static_cast<char>(x->rd(LCR)));
        got.push_back(static_cast<char>(x->rd(SCR)));
        x->out += "|" + got;
    }
    CHECK(b.out == a.out);
    CHECK(b.irq.count - 1 == a.irq.count - before);
    CHECK(b.dev->save() == a.dev->save());

    SerialState bad = s;
    bad.rx.count = Serial::RX_CAPACITY + 1;
    CountingIrq irq;
    CHECK_CONFIG_ERROR(Serial(irq, [](std::span<const std::uint8_t>) { return true; }, bad), "the FIFO holds 64");
    bad = s;
    bad.rx.head = Serial::RX_CAPACITY; // past the buffer
    CHECK_CONFIG_ERROR(Serial(irq, [](std::span<const std::uint8_t>) { return true; }, bad), "the FIFO holds 64");
    bad = s;
    bad.ier = 0xf3;
    CHECK_CONFIG_ERROR(Serial(irq, [](std::span<const std::uint8_t>) { return true; }, bad), "reserved register bits");
    CHECK(irq.count == 0);
}

TEST_CASE("state: the UART restored without a pending interrupt raises none", "[state][serial]") {
    CountingIrq irq;
    SerialState s;
    for (int b : {1, 2, 3}) REQUIRE(s.rx.push_back(static_cast<std::uint8_t>(b))); // data, but RDA interrupts disabled
    Serial dev(irq, [](std::span<const std::uint8_t>) { return true; }, s);
    CHECK(irq.count == 0);
}

TEST_CASE("state: the i8042 restored with output and a command pending behaves as the original", "[state][i8042]") {
    constexpr std::uint64_t DATA = 0, CMD = 4;
    struct Side : PortSide<I8042> {
        unsigned resets = 0;
    };
    Side a;
    a.dev = std::make_unique<I8042>(a.irq, [&] { ++a.resets; });
    a.wr(CMD, 0xaa);  // self test: 0x55 queued
    a.wr(CMD, 0x20);  // read control byte: queued
    REQUIRE(a.dev->send_ctrl_alt_del());
    a.wr(CMD, 0x60);  // write control byte: waits for its data byte
    const I8042State s = a.dev->save();
    CHECK(s.pending_cmd == 0x60);
    CHECK(s.out.size() == 13);

    Side b;
    b.dev = std::make_unique<I8042>(b.irq, [&] { ++b.resets; }, s);
    CHECK(b.irq.count == 1); // output waiting with the keyboard interrupt enabled
    CHECK(b.dev->save() == s);
    const unsigned before = a.irq.count;
    std::vector<std::uint8_t> ra, rb;
    for (auto [x, r] : {std::tuple{&a, &ra}, std::tuple{&b, &rb}}) {
        x->wr(DATA, 0x47); // the pending command's data byte
        for (int i = 0; i < 15; ++i) {
            r->push_back(x->rd(CMD));
            r->push_back(x->rd(DATA));
        }
        x->wr(CMD, 0x20);
        r->push_back(x->rd(DATA));
        x->wr(CMD, 0xfe);
    }
    CHECK(rb == ra);
    CHECK(b.irq.count - 1 == a.irq.count - before);
    CHECK(b.resets == 1);
    CHECK(a.resets == 1);
    CHECK(b.dev->save() == a.dev->save());

    I8042State bad = s;
    bad.out.count = 17;
    CountingIrq irq;
    CHECK_CONFIG_ERROR(I8042(irq, {}, bad), "the buffer holds 16");
    bad = s;
    bad.pending_cmd = 0xaa;
    CHECK_CONFIG_ERROR(I8042(irq, {}, bad), "takes no data byte");
    // A state saved with the status bit out of step with the buffer gets it right.
    bad = s;
    bad.out.clear();
    bad.status |= 0x01;
    I8042 empty(irq, {}, bad);
    CHECK((empty.save().status & 0x01) == 0);
    CHECK(irq.count == 0);
}

TEST_CASE("state: the boot timer keeps its value", "[state]") {
    BootTimer a;
    const std::uint8_t magic[1] = {BootTimer::MAGIC_BOOT_COMPLETE};
    a.write(0, magic);
    const BootTimerState s = a.save();
    CHECK(s.boot_time_us == a.boot_time_us());
    CHECK(s.boot_time_us > 0);
    BootTimer b(s);
    CHECK(b.boot_time_us() == a.boot_time_us());
    CHECK(b.save() == s);
    CHECK(BootTimer(BootTimerState{}).boot_time_us() == 0);
}

// ==========================================================================================
// Dirty pages: devices write guest memory only through GuestMemory, so its bitmap holds exactly
// the pages of device-writable buffers they were given (the rule of queue.hpp: whole buffers,
// marked when popped) and the used-ring bytes they stored, and nothing they only read.

namespace {
// Pages of the buffers of chain `c` at segment indices `segs`, each `len` long.
std::set<std::uint64_t> pages_of(const Chain& c, std::initializer_list<std::size_t> segs, std::initializer_list<std::uint64_t> lens) {
    std::set<std::uint64_t> p;
    auto len = lens.begin();
    for (std::size_t i : segs) {
        for (std::uint64_t a = c.addrs[i]; a < c.addrs[i] + *len; a += GuestMemory::PAGE_SIZE) p.insert(page_of(a));
        p.insert(page_of(c.addrs[i] + *len - 1));
        ++len;
    }
    return p;
}
std::set<std::uint64_t> with(std::set<std::uint64_t> s, std::uint64_t page) {
    s.insert(page);
    return s;
}
} // namespace

TEST_CASE("dirty: a queue marks the used ring it writes and nothing it reads", "[dirty][virtio]") {
    GuestMemory mem = make_test_ram();
    DriverRings d(mem, 16);
    Queue q(256);
    d.program(q);
    REQUIRE(q.activate(mem, true, false).empty());
    d.set_desc(0, kDataAddr, 4096);                                  // readable
    d.set_desc(1, kDataAddr + 0x3000, 100, desc_flag::WRITE);        // writable, inside one page
    d.set_desc(2, kDataAddr + 0x5ff0, 0x20, desc_flag::WRITE);       // writable, across two pages
    d.set_desc(3, kDataAddr + 0x8000, 0x2000, desc_flag::WRITE);     // writable, two whole pages
    d.publish(0);
    d.set_desc(4, kDataAddr + 0x3000, 100, desc_flag::WRITE | desc_flag::NEXT, 5);
    d.set_desc(5, kDataAddr + 0x5ff0, 0x20, desc_flag::WRITE);
    d.publish(4);
    d.publish(3);
    mem.enable_dirty_tracking();
    REQUIRE(q.pop().status == Queue::PopStatus::Chain);
    CHECK(dirty_pages(mem).empty()); // a readable buffer, the table and the available ring: read only
    REQUIRE(q.pop().status == Queue::PopStatus::Chain);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(kDataAddr + 0x3000), page_of(kDataAddr + 0x5000), page_of(kDataAddr + 0x6000)});
    REQUIRE(q.pop().status == Queue::PopStatus::Chain);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(kDataAddr + 0x8000), page_of(kDataAddr + 0x9000)});
    CHECK(q.pop().status == Queue::PopStatus::Empty);
    CHECK(dirty_pages(mem).empty());
    q.add_used(0, 0, false);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(kUsedAddr)}); // the element
    q.add_used(4, 0);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(kUsedAddr)}); // element and used.idx
    (void)q.needs_interrupt();
    CHECK(dirty_pages(mem).empty());
    CHECK_FALSE(q.enable_notification());
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(kUsedAddr + 4 + 8 * 16)}); // avail_event
    mem.disable_dirty_tracking();
    q.add_used(3, 0);
    CHECK(dirty_pages(mem).empty());
}

TEST_CASE("dirty: a queue with a used ring across pages marks the pages of what it stores", "[dirty][virtio]") {
    GuestMemory mem = make_test_ram();
    // Used ring of 256 entries from 0x4ffc: idx at 0x4ffe, elements 0.. from 0x5000, avail_event at 0x5800.
    DriverRings d(mem, 256, kDescAddr, kAvailAddr, 0x4ffc);
    Queue q(256);
    d.program(q);
    REQUIRE(q.activate(mem, true, false).empty());
    d.set_desc(0, kDataAddr, 16);
    d.publish(0);
    REQUIRE(q.pop().status == Queue::PopStatus::Chain);
    mem.enable_dirty_tracking();
    q.add_used(0, 0);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{4, 5});
    (void)q.enable_notification();
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(0x4ffc + 4 + 8 * 256)});
}

TEST_CASE("dirty: virtio-blk reads mark their data and status pages and the used ring; writes only status and used ring", "[dirty][block]") {
    const block::IoEngine engine = GENERATE(block::IoEngine::Sync, block::IoEngine::Async);
    INFO("engine " << (engine == block::IoEngine::Sync ? "Sync" : "Async"));
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    MemFd image(pattern(64 * 1024, 3));
    auto dev = std::make_shared<block::BlockDevice>(mem, io, drive(engine), image.dup(), 64 * 1024);
    VirtioDriver drv(mem, *dev, kOneQueue);
    drv.bring_up();
    mem.enable_dirty_tracking();
    const std::uint64_t used = page_of(kUsedAddr);

    const Chain w = post_blk(drv, OUT, 0, 8192, 1);
    (void)dirty_pages(mem); // what the test (the guest) wrote
    drv.notify(0);
    dev->quiesce();
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(w.addrs[2]), used});

    const Chain r = post_blk(drv, IN, 4, 8192, 0);
    (void)dirty_pages(mem);
    drv.notify(0);
    dev->quiesce();
    CHECK(dirty_pages(mem) == with(pages_of(r, {1, 2}, {8192, 1}), used));
    const Bytes disk = image.contents();
    CHECK(drv.guest(r.addrs[1], 8192) == Bytes(disk.begin() + 2048, disk.begin() + 2048 + 8192));

    const Chain id = post_blk(drv, static_cast<std::uint32_t>(block::RequestType::GetId), 0, 20, 0);
    (void)dirty_pages(mem);
    drv.notify(0);
    CHECK(dirty_pages(mem) == with(pages_of(id, {1, 2}, {20, 1}), used));
}

TEST_CASE("dirty: virtio-net receive marks the receive buffers and used ring; transmit only its used ring", "[dirty][net]") {
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    SocketTap tap;
    auto dev = std::make_shared<net::NetDevice>(mem, io, net_config(), std::move(tap.tap));
    VirtioDriver drv(mem, *dev, kTwoQueues);
    drv.bring_up(kNoGuestOffloads);
    mem.enable_dirty_tracking();

    const Chain rx = drv.post(net::NetDevice::RX, {writable(4096)});
    const Chain unused = drv.post(net::NetDevice::RX, {writable(4096)});
    tap.send(frame(1000, 1));
    (void)dirty_pages(mem);
    drv.notify(net::NetDevice::RX);
    REQUIRE(drv.rings(net::NetDevice::RX).used_idx() == 1);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(rx.addrs[0]), page_of(0x3000)});
    (void)unused;

    const Chain tx = drv.post(net::NetDevice::TX, {readable(frame(3000, 2))});
    (void)dirty_pages(mem);
    drv.notify(net::NetDevice::TX);
    REQUIRE(drv.rings(net::NetDevice::TX).used_idx() == 1);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(0x6000)});
    CHECK(tap.received().size() == 1);
    (void)tx;
    dev.reset();
}

TEST_CASE("dirty: virtio-console input marks its receive buffer (whole) and used ring; output only its used ring", "[dirty][console]") {
    using console::ConsoleDevice;
    GuestMemory mem = make_test_ram();
    boost::asio::io_context io;
    MemFd out_file;
    auto dev = std::make_shared<ConsoleDevice>(mem, std::make_shared<ConsoleOutput>(io, out_file.dup()), std::nullopt);
    VirtioDriver drv(mem, *dev, kTwoQueues);
    drv.bring_up();
    mem.enable_dirty_tracking();

    const Chain rx = drv.post(ConsoleDevice::RX, {writable(8192)});
    (void)dirty_pages(mem);
    {
        std::lock_guard lk(dev->mutex());
        const std::uint8_t in[5] = {'h', 'e', 'l', 'l', 'o'};
        CHECK(dev->enqueue_input(in) == 5);
    }
    // Five bytes written, both pages of the buffer marked: the superset rule of queue.hpp.
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(rx.addrs[0]), page_of(rx.addrs[0]) + 1, page_of(0x3000)});

    (void)drv.post(ConsoleDevice::TX, {readable("output")});
    (void)dirty_pages(mem);
    drv.notify(ConsoleDevice::TX);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{page_of(0x6000)});
    CHECK(out_file.contents() == Bytes{'o', 'u', 't', 'p', 'u', 't'});
}
