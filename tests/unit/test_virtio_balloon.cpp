// virtio-balloon (virtio 1.2 §5.5): the request parsers (devices/virtio/balloon/request.hpp),
// GuestMemory::discard, and the device driven through split rings in fake guest RAM: inflated
// pages really leave the process (mincore), deflate is counted, statistics, free-page hinting and
// reporting, hostile chains, and its saved state.

#include "devices/virtio/balloon/backend.hpp"
#include "devices/virtio/balloon/device.hpp"
#include "devices/virtio/balloon/request.hpp"
#include "devices/virtio/spec.hpp"
#include "test_util.hpp"
#include "virtio_driver.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/snapshot_file.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <memory>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::balloon;
using namespace ember::test;
using Bytes = std::vector<std::uint8_t>;

namespace {

Bytes pfn_bytes(const std::vector<std::uint32_t>& pfns) {
    Bytes b;
    for (auto p : pfns)
        for (int i = 0; i < 4; ++i) b.push_back(static_cast<std::uint8_t>(p >> (8 * i)));
    return b;
}

Bytes stat_bytes(const std::vector<std::pair<std::uint16_t, std::uint64_t>>& entries) {
    Bytes b;
    for (auto [tag, val] : entries) {
        b.push_back(static_cast<std::uint8_t>(tag));
        b.push_back(static_cast<std::uint8_t>(tag >> 8));
        for (int i = 0; i < 8; ++i) b.push_back(static_cast<std::uint8_t>(val >> (8 * i)));
    }
    return b;
}

// Descriptors over guest RAM (the parsers read through `host`).
struct Descs {
    explicit Descs(const GuestMemory& m) : mem(m) {}
    Descs& add(std::uint64_t addr, std::uint32_t len, bool w, const Bytes& content = {}) {
        if (!content.empty()) REQUIRE(mem.write(GuestAddr(addr), std::as_bytes(std::span(content))));
        auto s = mem.slice(GuestAddr(addr), len);
        descs.push_back(Descriptor{GuestAddr(addr), len, w, s ? s->data() : nullptr});
        return *this;
    }
    const GuestMemory& mem;
    std::vector<Descriptor> descs;
};

// Whether the host page behind guest page `pfn` is resident.
bool resident(const GuestMemory& mem, std::uint64_t pfn) {
    auto s = mem.slice(GuestAddr(pfn * PAGE_BYTES), PAGE_BYTES);
    REQUIRE(s);
    unsigned char v = 0;
    REQUIRE(::mincore(s->data(), PAGE_BYTES, &v) == 0);
    return (v & 1) != 0;
}

void touch(const GuestMemory& mem, std::uint64_t first_pfn, std::uint64_t pages, std::uint8_t val) {
    for (std::uint64_t p = first_pfn; p < first_pfn + pages; ++p) {
        auto s = mem.writable(GuestAddr(p * PAGE_BYTES), PAGE_BYTES);
        REQUIRE(s);
        std::memset(s->data(), val, PAGE_BYTES);
    }
}

std::vector<VirtioDriver::Layout> layout(std::size_t queues) {
    std::vector<VirtioDriver::Layout> l;
    for (std::size_t i = 0; i < queues; ++i) {
        const std::uint64_t base = 0x1000 * (i + 1);
        l.push_back({16, base, base + 0x100, base + 0x200});
    }
    return l;
}

std::size_t queue_count(const BalloonConfig& c) {
    return 2 + (c.stats_polling_interval_s > 0) + c.free_page_hinting + c.free_page_reporting;
}

struct Rig {
    explicit Rig(BalloonConfig c = {})
        : cfg(c), dev(std::make_shared<BalloonDevice>(mem, io, c)), drv(mem, *dev, layout(queue_count(c))) {}
    boost::asio::io_context io;
    GuestMemory mem = make_test_ram();
    BalloonConfig cfg;
    std::shared_ptr<BalloonDevice> dev;
    VirtioDriver drv;
    const BalloonMetrics& m() const { return dev->metrics(); }
    bool needs_reset() const { return (dev->state().status & status::DEVICE_NEEDS_RESET) != 0; }
    std::uint32_t cfg32(std::uint64_t off) const {
        std::uint8_t b[4] = {};
        dev->read_config(off, b);
        return static_cast<std::uint32_t>(b[0] | b[1] << 8 | b[2] << 16) | static_cast<std::uint32_t>(b[3]) << 24;
    }
};

// The PFNs a test inflates: pages of the buffer area, far from the rings and the PFN arrays.
constexpr std::uint32_t kFirstPfn = 0x80; // 512 KiB

} // namespace

// ==========================================================================================
// parse_pfns

TEST_CASE("balloon parse_pfns: PFNs become sorted merged page ranges, duplicates once", "[balloon]") {
    GuestMemory mem = make_test_ram();
    Descs d(mem);
    d.add(0x20000, 16, false, pfn_bytes({0x83, 0x81, 0x82, 0x90})).add(0x21000, 8, false, pfn_bytes({0x81, 0x91}));
    std::vector<PageRange> out;
    REQUIRE(parse_pfns(d.descs, mem, out) == RequestError::None);
    CHECK(out == std::vector<PageRange>{{GuestAddr(0x81000), 3}, {GuestAddr(0x90000), 2}});
}

TEST_CASE("balloon parse_pfns: bad chains are refused whole", "[balloon]") {
    GuestMemory mem = make_test_ram();
    std::vector<PageRange> out{{GuestAddr(0), 1}};
    SECTION("a device-writable buffer") {
        Descs d(mem);
        d.add(0x20000, 4, true);
        CHECK(parse_pfns(d.descs, mem, out) == RequestError::DeviceWritable);
    }
    SECTION("a length that is not whole PFNs") {
        Descs d(mem);
        d.add(0x20000, 6, false, pfn_bytes({1, 2}));
        CHECK(parse_pfns(d.descs, mem, out) == RequestError::BadLength);
    }
    SECTION("more than 256 PFNs") {
        Descs d(mem);
        d.add(0x20000, 4 * 200, false).add(0x21000, 4 * 57, false);
        CHECK(parse_pfns(d.descs, mem, out) == RequestError::TooLong);
    }
    SECTION("a page outside guest RAM, even after good ones") {
        Descs d(mem);
        d.add(0x20000, 12, false, pfn_bytes({0x81, static_cast<std::uint32_t>(kRamBytes / PAGE_BYTES), 0x82}));
        CHECK(parse_pfns(d.descs, mem, out) == RequestError::OutsideRam);
        Descs e(mem);
        e.add(0x20000, 4, false, pfn_bytes({0xffffffffu}));
        CHECK(parse_pfns(e.descs, mem, out) == RequestError::OutsideRam);
    }
    CHECK(out.empty());
}

TEST_CASE("balloon parse_pfns: ranges never cross between RAM regions", "[balloon]") {
    GuestMemory mem = GuestMemory::with_regions({{GuestAddr(0), 0x10000}, {GuestAddr(0x10000), 0x10000}});
    Descs d(mem);
    d.add(0x1000, 12, false, pfn_bytes({0xe, 0xf, 0x10}));
    std::vector<PageRange> out;
    REQUIRE(parse_pfns(d.descs, mem, out) == RequestError::None);
    CHECK(out == std::vector<PageRange>{{GuestAddr(0xe000), 2}, {GuestAddr(0x10000), 1}});
}

// ==========================================================================================
// parse_stats, parse_hint, parse_report

TEST_CASE("balloon parse_stats: tags and 64-bit values, also across buffers; unknown tags skipped", "[balloon]") {
    GuestMemory mem = make_test_ram();
    const Bytes b = stat_bytes({{stat_tag::MEMFREE, 0x1122334455667788ull}, {stat_tag::MEMTOT, 512ull << 20}, {99, 7}, {stat_tag::SWAP_IN, 0}});
    Descs d(mem);
    d.add(0x20000, 13, false, Bytes(b.begin(), b.begin() + 13)).add(0x21000, static_cast<std::uint32_t>(b.size() - 13), false, Bytes(b.begin() + 13, b.end()));
    GuestStats s;
    s.values[stat_tag::MAJFLT] = 5;
    REQUIRE(parse_stats(d.descs, s) == RequestError::None);
    CHECK(s.values[stat_tag::MEMFREE] == 0x1122334455667788ull);
    CHECK(s.values[stat_tag::MEMTOT] == (512ull << 20));
    CHECK(s.values[stat_tag::SWAP_IN] == 0u);
    CHECK(s.values[stat_tag::MAJFLT] == 5u); // earlier values stay
    CHECK_FALSE(s.values[stat_tag::AVAIL]);
    CHECK(std::string(stat_name(stat_tag::AVAIL)) == "available_memory");
    CHECK(std::string(stat_name(stat_tag::HTLB_PGFAIL)) == "hugetlb_failures");
}

TEST_CASE("balloon parse_stats: bad buffers change nothing", "[balloon]") {
    GuestMemory mem = make_test_ram();
    GuestStats s;
    s.values[stat_tag::MEMFREE] = 1;
    const GuestStats before = s;
    Descs partial(mem);
    partial.add(0x20000, 15, false, stat_bytes({{stat_tag::MEMFREE, 2}, {stat_tag::MEMTOT, 3}}));
    CHECK(parse_stats(partial.descs, s) == RequestError::BadLength);
    Descs w(mem);
    w.add(0x20000, 10, true);
    CHECK(parse_stats(w.descs, s) == RequestError::DeviceWritable);
    Descs huge(mem);
    huge.add(0x20000, static_cast<std::uint32_t>(10 * (MAX_STAT_ENTRIES + 1)), false);
    CHECK(parse_stats(huge.descs, s) == RequestError::TooLong);
    CHECK(s == before);
}

TEST_CASE("balloon parse_hint / parse_report: command ids and page-aligned writable ranges", "[balloon]") {
    GuestMemory mem = make_test_ram();
    HintChain h;
    Descs cmd(mem);
    cmd.add(0x20000, 4, false, pfn_bytes({7}));
    REQUIRE(parse_hint(cmd.descs, mem, h) == RequestError::None);
    CHECK(h.cmd_id == 7u);
    Descs pages(mem);
    pages.add(0x80000, 0x4000, true).add(0x90000, 0x1000, true);
    REQUIRE(parse_hint(pages.descs, mem, h) == RequestError::None);
    CHECK_FALSE(h.cmd_id);
    CHECK(h.ranges == std::vector<PageRange>{{GuestAddr(0x80000), 4}, {GuestAddr(0x90000), 1}});
    Descs bad_cmd(mem);
    bad_cmd.add(0x20000, 8, false);
    CHECK(parse_hint(bad_cmd.descs, mem, h) == RequestError::BadLength);

    std::vector<PageRange> out;
    Descs misaligned(mem);
    misaligned.add(0x80800, 0x1000, true);
    CHECK(parse_report(misaligned.descs, mem, out) == RequestError::BadLength);
    Descs outside(mem);
    outside.add(kRamBytes - 0x1000, 0x2000, true);
    CHECK(parse_report(outside.descs, mem, out) == RequestError::OutsideRam);
    Descs readable_buf(mem);
    readable_buf.add(0x80000, 0x1000, false).add(0x81000, 0x1000, false);
    CHECK(parse_report(readable_buf.descs, mem, out) == RequestError::DeviceReadable);
    CHECK(out.empty());
}

// ==========================================================================================
// GuestMemory::discard

TEST_CASE("guest memory discard: pages leave the process and read back as zeros; bad ranges refused", "[balloon]") {
    GuestMemory mem = make_test_ram();
    touch(mem, 0x80, 4, 0xab);
    CHECK(resident(mem, 0x81));
    CHECK(mem.discard(GuestAddr(0x81000), 0x2000) == 0);
    CHECK_FALSE(resident(mem, 0x81));
    CHECK_FALSE(resident(mem, 0x82));
    CHECK(resident(mem, 0x80));
    CHECK(resident(mem, 0x83));
    std::uint8_t b = 1;
    REQUIRE(mem.read_obj(GuestAddr(0x81000), b));
    CHECK(b == 0);
    REQUIRE(mem.read_obj(GuestAddr(0x80fff), b));
    CHECK(b == 0xab);
    CHECK(mem.discard(GuestAddr(0x80800), 0x1000) == EINVAL);
    CHECK(mem.discard(GuestAddr(0x80000), 0x800) == EINVAL);
    CHECK(mem.discard(GuestAddr(kRamBytes - 0x1000), 0x2000) == EINVAL);
    CHECK(mem.discard(GuestAddr(0x80000), 0) == EINVAL);
    CHECK(resident(mem, 0x80));
}

TEST_CASE("guest memory discard: marks the pages dirty while tracking", "[balloon]") {
    GuestMemory mem = make_test_ram();
    mem.enable_dirty_tracking();
    REQUIRE(mem.discard(GuestAddr(0x82000), 0x1000) == 0);
    CHECK(dirty_pages(mem) == std::set<std::uint64_t>{0x82});
}

// ==========================================================================================
// The device

TEST_CASE("balloon device: features and queues follow the configuration", "[balloon]") {
    Rig plain;
    CHECK(plain.dev->device_type() == device_id::BALLOON);
    CHECK(plain.dev->queues().size() == 2);
    CHECK(plain.dev->device_features() == 0);
    Rig all(BalloonConfig{10, true, 1, true, true});
    CHECK(all.dev->queues().size() == 5);
    CHECK(all.dev->device_features() ==
          (bit(balloon::feature::STATS_VQ) | bit(balloon::feature::DEFLATE_ON_OOM) | bit(balloon::feature::FREE_PAGE_HINT) | bit(balloon::feature::REPORTING)));
    CHECK_CONFIG_ERROR(BalloonDevice(all.mem, all.io, BalloonConfig{16777216}), "Amount of pages requested is too large.");
}

TEST_CASE("balloon device: config space holds the target, the driver's actual size and the hint id", "[balloon]") {
    Rig r(BalloonConfig{64, false, 0, true, false});
    r.drv.bring_up();
    CHECK(r.cfg32(0) == 64 * 256);
    CHECK(r.cfg32(4) == 0);
    const std::uint8_t actual[4] = {0x34, 0x12, 0, 0};
    r.dev->write_config(4, actual);
    CHECK(r.cfg32(4) == 0x1234);
    const std::uint8_t bogus[4] = {1, 1, 1, 1};
    r.dev->write_config(0, bogus); // num_pages is read only
    r.dev->write_config(8, bogus);
    CHECK(r.cfg32(0) == 64 * 256);
    CHECK(r.cfg32(8) == CMD_ID_STOP);
    std::uint8_t past[4] = {9, 9, 9, 9};
    r.dev->read_config(16, past);
    CHECK(Bytes(past, past + 4) == Bytes(4, 0));
    (void)r.drv.irq_raised();
    r.dev->set_target_mib(300);
    CHECK(r.cfg32(0) == 300 * 256);
    CHECK(r.drv.irq_raised()); // configuration-change interrupt
    CHECK((r.dev->interrupt_status() & INT_CONFIG) != 0);
    CHECK(r.dev->stats().target_pages == 300 * 256);
    CHECK(r.dev->stats().actual_pages == 0x1234);
}

TEST_CASE("balloon device: inflated pages are given back to the host, deflate is counted", "[balloon]") {
    Rig r;
    r.drv.bring_up();
    touch(r.mem, kFirstPfn, 16, 0x5a);
    const Chain c = r.drv.post(0, {readable(pfn_bytes({kFirstPfn + 1, kFirstPfn + 2, kFirstPfn + 3, kFirstPfn + 9}))});
    r.drv.notify(0);
    DriverRings& q = r.drv.rings(0);
    REQUIRE(q.used_idx() == 1);
    CHECK(q.nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{c.head, 0});
    CHECK(r.drv.irq_raised());
    for (std::uint32_t p : {kFirstPfn + 1, kFirstPfn + 2, kFirstPfn + 3, kFirstPfn + 9}) CHECK_FALSE(resident(r.mem, p));
    CHECK(resident(r.mem, kFirstPfn));
    CHECK(resident(r.mem, kFirstPfn + 4));
    CHECK(r.drv.guest((kFirstPfn + 2) * PAGE_BYTES, 8) == Bytes(8, 0));
    CHECK(r.drv.guest((kFirstPfn + 4) * PAGE_BYTES, 8) == Bytes(8, 0x5a));
    CHECK(r.dev->inflated_pages() == 4);
    CHECK(r.m().inflate_count == 1);
    CHECK(r.m().event_fails == 0);

    const Chain d = r.drv.post(1, {readable(pfn_bytes({kFirstPfn + 1, kFirstPfn + 2}))});
    r.drv.notify(1);
    REQUIRE(r.drv.rings(1).used_idx() == 1);
    CHECK(r.drv.rings(1).nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{d.head, 0});
    CHECK(r.dev->deflated_pages() == 2);
    CHECK(r.m().deflate_count == 1);
    // The guest uses a deflated page again: a fresh zero page, writable.
    touch(r.mem, kFirstPfn + 1, 1, 0x77);
    CHECK(r.drv.guest((kFirstPfn + 1) * PAGE_BYTES, 4) == Bytes(4, 0x77));
}

TEST_CASE("balloon device: hostile inflate chains are returned untouched and counted", "[balloon]") {
    Rig r;
    r.drv.bring_up();
    touch(r.mem, kFirstPfn, 4, 0x5a);
    const Chain outside = r.drv.post(0, {readable(pfn_bytes({kFirstPfn, 0x7fffffff}))});
    const Chain writable_buf = r.drv.post(0, {writable(8)});
    const Chain odd = r.drv.post(0, {readable(Bytes{1, 2, 3})});
    const Chain good = r.drv.post(0, {readable(pfn_bytes({kFirstPfn + 3}))});
    r.drv.notify(0);
    DriverRings& q = r.drv.rings(0);
    REQUIRE(q.used_idx() == 4);
    CHECK(q.nth_used(0).first == outside.head);
    CHECK(q.nth_used(1).first == writable_buf.head);
    CHECK(q.nth_used(2).first == odd.head);
    CHECK(q.nth_used(3).first == good.head);
    CHECK(resident(r.mem, kFirstPfn)); // the chain with a bad PFN discarded nothing
    CHECK_FALSE(resident(r.mem, kFirstPfn + 3));
    CHECK(r.m().event_fails == 3);
    CHECK(r.dev->inflated_pages() == 1);
    CHECK_FALSE(r.needs_reset());
}

TEST_CASE("balloon device: a broken ring fails the device, not the process", "[balloon]") {
    Rig r;
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    q.set_avail_idx(static_cast<std::uint16_t>(q.avail_idx() + 40)); // more chains than the queue holds
    r.drv.notify(0);
    CHECK(r.needs_reset());
    CHECK(r.m().event_fails == 1);
}

TEST_CASE("balloon device: the stats buffer is held, returned on each update, and parsed", "[balloon]") {
    Rig r(BalloonConfig{0, false, 5, false, false});
    r.drv.bring_up();
    CHECK(r.dev->role(2) == BalloonDevice::Role::Stats);
    const Chain first = r.drv.post(2, {readable(stat_bytes({{stat_tag::MEMFREE, 100ull << 20}, {stat_tag::MEMTOT, 512ull << 20}}))});
    r.drv.notify(2);
    DriverRings& q = r.drv.rings(2);
    CHECK(q.used_idx() == 0); // held until the timer asks for fresh numbers
    CHECK(r.m().stats_updates_count == 1);
    BalloonStatsView v = r.dev->stats();
    CHECK(v.guest.values[stat_tag::MEMFREE] == (100ull << 20));
    CHECK(v.guest.values[stat_tag::MEMTOT] == (512ull << 20));
    {
        std::lock_guard lk(r.dev->mutex());
        r.dev->trigger_stats_update();
    }
    REQUIRE(q.used_idx() == 1);
    CHECK(q.nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{first.head, 0});
    CHECK(r.drv.irq_raised());
    {
        std::lock_guard lk(r.dev->mutex());
        r.dev->trigger_stats_update(); // nothing held: nothing returned
    }
    CHECK(q.used_idx() == 1);
    // The driver's next report; a malformed one is counted and still held.
    (void)r.drv.post(2, {readable(stat_bytes({{stat_tag::MEMFREE, 90ull << 20}}))});
    r.drv.notify(2);
    CHECK(r.dev->stats().guest.values[stat_tag::MEMFREE] == (90ull << 20));
    const Chain bad = r.drv.post(2, {readable(Bytes(7, 1))});
    r.drv.notify(2);
    CHECK(q.used_idx() == 2); // the previous buffer came back when the second arrived
    CHECK(r.m().stats_update_fails == 1);
    CHECK(r.dev->stats().guest.values[stat_tag::MEMFREE] == (90ull << 20));
    {
        std::lock_guard lk(r.dev->mutex());
        r.dev->trigger_stats_update();
    }
    CHECK(q.nth_used(2).first == bad.head);
}

TEST_CASE("balloon device: statistics can change interval but not be switched on or off", "[balloon]") {
    Rig on(BalloonConfig{0, false, 5, false, false});
    on.dev->set_stats_interval(2);
    CHECK(on.dev->current_config().stats_polling_interval_s == 2);
    CHECK_CONFIG_ERROR(on.dev->set_stats_interval(0), "Cannot enable/disable the statistics after boot.");
    Rig off;
    CHECK_CONFIG_ERROR(off.dev->set_stats_interval(1), "Cannot enable/disable the statistics after boot.");
    CHECK(off.dev->current_config().stats_polling_interval_s == 0);
}

TEST_CASE("balloon device: the stats timer returns the buffer on the event loop", "[balloon]") {
    Rig r(BalloonConfig{0, false, 1, false, false});
    r.drv.bring_up(); // activation arms the timer (posted to the io_context)
    (void)r.drv.post(2, {readable(stat_bytes({{stat_tag::MEMFREE, 1}}))});
    r.drv.notify(2);
    r.dev->set_stats_interval(1); // the first update right away
    r.io.run_for(std::chrono::milliseconds(300));
    CHECK(r.drv.rings(2).used_idx() == 1);
}

TEST_CASE("balloon device: free page hinting exchanges command ids and discards hinted pages", "[balloon]") {
    Rig r(BalloonConfig{0, false, 0, true, false});
    r.drv.bring_up();
    CHECK(r.dev->role(2) == BalloonDevice::Role::Hint);
    CHECK(r.dev->hinting_status() == HintingStatus{CMD_ID_STOP, std::nullopt});
    (void)r.drv.irq_raised();
    r.dev->start_hinting(true);
    const std::uint32_t id = r.cfg32(8);
    CHECK(id >= CMD_ID_FIRST);
    CHECK(r.drv.irq_raised());
    touch(r.mem, kFirstPfn, 8, 0x11);
    (void)r.drv.post(2, {readable(pfn_bytes({id}))});
    r.drv.notify(2);
    CHECK(r.dev->hinting_status().guest_cmd == id);
    // A hint buffer: the device-writable pages themselves.
    (void)r.drv.post(2, {readable(pfn_bytes({id}))}); // harmless repeat
    r.drv.notify(2);
    // Hint 4 pages at kFirstPfn through a writable buffer the driver lays out there.
    DriverRings& q = r.drv.rings(2);
    const std::uint16_t before = q.used_idx();
    q.set_desc(10, kFirstPfn * PAGE_BYTES, 4 * PAGE_BYTES, desc_flag::WRITE, 0);
    q.publish(10);
    r.drv.notify(2);
    REQUIRE(q.used_idx() == before + 1);
    for (std::uint32_t p = kFirstPfn; p < kFirstPfn + 4; ++p) CHECK_FALSE(resident(r.mem, p));
    CHECK(resident(r.mem, kFirstPfn + 4));
    CHECK(r.m().free_page_hint_count == 1);
    CHECK(r.m().free_page_hint_freed == 4 * PAGE_BYTES);
    // The driver's STOP is acknowledged with DONE (acknowledge_on_stop).
    (void)r.drv.post(2, {readable(pfn_bytes({CMD_ID_STOP}))});
    r.drv.notify(2);
    CHECK(r.dev->hinting_status() == HintingStatus{CMD_ID_DONE, CMD_ID_STOP});
    CHECK(r.cfg32(8) == CMD_ID_DONE);
    r.dev->start_hinting(false);
    CHECK(r.cfg32(8) >= CMD_ID_FIRST);
    CHECK(r.cfg32(8) != id);
    r.dev->stop_hinting();
    CHECK(r.cfg32(8) == CMD_ID_DONE);
}

TEST_CASE("balloon device: free page reporting discards reported ranges, refuses bad ones", "[balloon]") {
    Rig r(BalloonConfig{0, false, 0, false, true});
    r.drv.bring_up();
    CHECK(r.dev->role(2) == BalloonDevice::Role::Report);
    touch(r.mem, kFirstPfn, 8, 0x22);
    DriverRings& q = r.drv.rings(2);
    q.set_desc(0, kFirstPfn * PAGE_BYTES, 2 * PAGE_BYTES, desc_flag::WRITE | desc_flag::NEXT, 1);
    q.set_desc(1, (kFirstPfn + 4) * PAGE_BYTES, PAGE_BYTES, desc_flag::WRITE, 0);
    q.publish(0);
    q.set_desc(2, (kFirstPfn + 6) * PAGE_BYTES + 8, PAGE_BYTES, desc_flag::WRITE, 0); // misaligned
    q.publish(2);
    r.drv.notify(2);
    REQUIRE(q.used_idx() == 2);
    CHECK_FALSE(resident(r.mem, kFirstPfn));
    CHECK_FALSE(resident(r.mem, kFirstPfn + 1));
    CHECK(resident(r.mem, kFirstPfn + 2));
    CHECK_FALSE(resident(r.mem, kFirstPfn + 4));
    CHECK(resident(r.mem, kFirstPfn + 6));
    CHECK(r.m().free_page_report_count == 1);
    CHECK(r.m().free_page_report_freed == 3 * PAGE_BYTES);
    CHECK(r.m().free_page_report_fails == 1);
}

TEST_CASE("balloon device: without the stats feature negotiated, the next queue is the hint queue", "[balloon]") {
    Rig r(BalloonConfig{0, false, 1, true, false});
    r.drv.bring_up(bit(balloon::feature::STATS_VQ)); // a driver that does not take statistics
    CHECK(r.dev->role(2) == BalloonDevice::Role::Hint);
    CHECK(r.dev->role(3) == BalloonDevice::Role::Unused);
}

TEST_CASE("balloon device: metrics carry Firecracker's balloon counter names", "[balloon]") {
    Rig r;
    std::vector<std::string> names;
    for (const auto& [k, v] : r.m().values()) names.push_back(k);
    CHECK(names == std::vector<std::string>{"activate_fails", "inflate_count", "stats_updates_count", "stats_update_fails",
                                            "deflate_count", "event_fails", "free_page_report_count", "free_page_report_freed",
                                            "free_page_report_fails", "free_page_hint_count", "free_page_hint_freed",
                                            "free_page_hint_fails"});
}

// ==========================================================================================
// Saved state

TEST_CASE("state: virtio-balloon restored holds the same stats buffer, target and hinting ids", "[state][balloon]") {
    Rig r(BalloonConfig{32, true, 5, true, false});
    r.drv.bring_up();
    const std::uint8_t actual[4] = {0, 1, 0, 0};
    r.dev->write_config(4, actual);
    (void)r.drv.post(2, {readable(stat_bytes({{stat_tag::MEMFREE, 42}}))});
    r.drv.notify(2);
    r.dev->start_hinting(true);
    touch(r.mem, kFirstPfn, 2, 1);
    (void)r.drv.post(0, {readable(pfn_bytes({kFirstPfn}))});
    r.drv.notify(0);
    const BalloonState s = r.dev->save();
    CHECK(s.stats_desc);
    CHECK(s.num_pages == 32 * 256);
    CHECK(s.actual_pages == 256);
    CHECK(s.inflated_pages == 1);

    GuestMemory mem2 = clone_ram(r.mem);
    auto dev2 = BalloonDevice::restore(mem2, r.io, r.cfg, s);
    VirtioDriver drv2 = r.drv.moved_to(mem2, *dev2);
    CHECK(dev2->save() == s);
    CHECK(dev2->role(2) == BalloonDevice::Role::Stats);
    CHECK(dev2->role(3) == BalloonDevice::Role::Hint);
    {
        std::lock_guard lk(dev2->mutex());
        dev2->trigger_stats_update(); // the held buffer goes back to the driver
    }
    CHECK(drv2.rings(2).used_idx() == 1);
    CHECK(dev2->stats().guest.values[stat_tag::MEMFREE] == 42u);
}

TEST_CASE("state: a virtio-balloon state that does not fit is refused", "[state][balloon]") {
    Rig r(BalloonConfig{32, false, 5, false, false});
    r.drv.bring_up();
    const BalloonState s = r.dev->save();
    GuestMemory mem2 = clone_ram(r.mem);
    CHECK_CONFIG_ERROR(BalloonDevice::restore(mem2, r.io, BalloonConfig{32, false, 0, false, false}, s), "statistics interval");
    BalloonState held = s; // a held stats buffer the queue never took
    held.stats_desc = 3;
    CHECK_CONFIG_ERROR(BalloonDevice::restore(mem2, r.io, r.cfg, held), "stats buffer");
    BalloonState pages = s;
    pages.num_pages = 100;
    CHECK_CONFIG_ERROR(BalloonDevice::restore(mem2, r.io, r.cfg, pages), "whole number of MiB");
    BalloonState queues = s;
    queues.virtio.queues.pop_back();
    CHECK_CONFIG_ERROR(BalloonDevice::restore(mem2, r.io, r.cfg, queues), "queue");
}

TEST_CASE("state: a restored virtio-balloon re-arms its statistics timer and takes a new target", "[state][balloon]") {
    Rig r(BalloonConfig{16, false, 1, false, false});
    r.drv.bring_up();
    (void)r.drv.post(2, {readable(stat_bytes({{stat_tag::MEMFREE, 7}}))});
    r.drv.notify(2);
    const BalloonState s = r.dev->save();
    REQUIRE(s.stats_desc);

    // Through the snapshot file's encoding, onto a fresh event loop (a fresh process's).
    SnapshotFile f;
    f.vm.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    f.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    f.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    f.vcpus.resize(1);
    f.devices.push_back(SnapshotDevice{"", 0xd0000000, 5, s});
    const SnapshotFile back = decode_snapshot(encode_snapshot(f));
    REQUIRE(back.devices.size() == 1);
    const auto& s2 = std::get<BalloonState>(back.devices[0].state);
    CHECK(s2 == s);

    boost::asio::io_context io2;
    GuestMemory mem2 = clone_ram(r.mem);
    auto dev2 = BalloonDevice::restore(mem2, io2, r.cfg, s2);
    VirtioDriver drv2 = r.drv.moved_to(mem2, *dev2);
    CHECK(dev2->current_config().amount_mib == 16);
    CHECK(dev2->current_config().stats_polling_interval_s == 1);
    CHECK(drv2.rings(2).used_idx() == 0); // the buffer is still held
    // Nobody asks for an update: the timer the restore armed returns the buffer after 1 s.
    io2.run_for(std::chrono::milliseconds(1500));
    CHECK(drv2.rings(2).used_idx() == 1);
    CHECK(dev2->stats().guest.values[stat_tag::MEMFREE] == 7u);

    (void)drv2.irq_raised();
    dev2->set_target_mib(48);
    CHECK(drv2.irq_raised());
    std::uint8_t b[4] = {};
    dev2->read_config(0, b);
    CHECK((b[0] | b[1] << 8 | b[2] << 16) == 48 * 256);
}
