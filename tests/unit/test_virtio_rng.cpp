// virtio-rng (virtio 1.2 §5.4): the request check (devices/virtio/rng/request.hpp), the host
// source (backend.hpp), and the device driven through a split ring in fake guest RAM, including
// hostile drivers and its saved state (device.hpp).

#include "devices/virtio/rng/backend.hpp"
#include "devices/virtio/rng/device.hpp"
#include "devices/virtio/rng/request.hpp"
#include "devices/virtio/spec.hpp"
#include "io_util.hpp"
#include "test_util.hpp"
#include "virtio_driver.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::rng;
using namespace ember::test;
using Bytes = std::vector<std::uint8_t>;

namespace {

// Descriptors over buffers this test owns (for the pure function).
class Descs {
public:
    Descs& add(std::uint32_t len, bool writable) {
        storage_.push_back(std::make_unique<std::byte[]>(std::max<std::size_t>(len, 1)));
        descs_.push_back(Descriptor{GuestAddr(0x1000 * (descs_.size() + 1)), len, writable, storage_.back().get()});
        return *this;
    }
    Descs& w(std::uint32_t len) { return add(len, true); }
    Descs& r(std::uint32_t len) { return add(len, false); }
    std::span<const Descriptor> span() const { return descs_; }
    const Descriptor& operator[](std::size_t i) const { return descs_[i]; }

private:
    std::vector<std::unique_ptr<std::byte[]>> storage_;
    std::vector<Descriptor> descs_;
};

// A source that writes a running byte counter (so that two devices fed the same requests write
// the same bytes), or fails with `error`.
class CountingSource final : public EntropySource {
public:
    explicit CountingSource(int error = 0, std::uint8_t start = 0) : error_(error), next_(start) {}
    int fill(std::span<std::byte> buf) noexcept override {
        ++calls;
        if (error_ != 0) return error_;
        for (auto& b : buf) b = static_cast<std::byte>(next_++);
        return 0;
    }
    unsigned calls = 0;

private:
    int error_;
    std::uint8_t next_;
};

const std::vector<VirtioDriver::Layout> kLayout{{16, kDescAddr, kAvailAddr, kUsedAddr}};

std::size_t distinct(const Bytes& b) { return std::set<std::uint8_t>(b.begin(), b.end()).size(); }
bool all_zero(const Bytes& b) { return std::all_of(b.begin(), b.end(), [](std::uint8_t v) { return v == 0; }); }

struct Rig {
    explicit Rig(std::unique_ptr<EntropySource> src = host_random(), EntropyConfig cfg = {})
        : dev(std::make_shared<EntropyDevice>(mem, io, std::move(cfg), std::move(src))), drv(mem, *dev, kLayout) {}
    // Runs the event loop until `done` or 5 s.
    bool run_until(const std::function<bool()>& done) { return ember::test::run_io_until(io, done); }
    boost::asio::io_context io;
    GuestMemory mem = make_test_ram();
    std::shared_ptr<EntropyDevice> dev;
    VirtioDriver drv;
    const EntropyMetrics& m() const { return dev->metrics(); }
    bool needs_reset() const { return (dev->state().status & status::DEVICE_NEEDS_RESET) != 0; }
};

} // namespace

// ==========================================================================================
// gather_buffers (§5.4.6.1: requestq buffers are device-writable only)

TEST_CASE("rng gather_buffers: writable buffers in order, empty ones skipped", "[rng]") {
    Descs c;
    c.w(10).w(0).w(20).w(0);
    std::vector<iovec> iov{iovec{nullptr, 7}};
    std::size_t total = 99;
    REQUIRE(gather_buffers(c.span(), MAX_REQUEST_BYTES, iov, total) == RequestError::None);
    CHECK(total == 30);
    REQUIRE(iov.size() == 2);
    CHECK(iov[0].iov_base == c[0].host);
    CHECK(iov[0].iov_len == 10);
    CHECK(iov[1].iov_base == c[2].host);
    CHECK(iov[1].iov_len == 20);
}

TEST_CASE("rng gather_buffers: an empty chain or empty buffers ask for nothing and are no error", "[rng]") {
    std::vector<iovec> iov;
    std::size_t total = 5;
    CHECK(gather_buffers({}, MAX_REQUEST_BYTES, iov, total) == RequestError::None);
    CHECK(total == 0);
    Descs c;
    c.w(0).w(0);
    CHECK(gather_buffers(c.span(), MAX_REQUEST_BYTES, iov, total) == RequestError::None);
    CHECK(total == 0);
    CHECK(iov.empty());
}

TEST_CASE("rng gather_buffers: the limit cuts the buffer it falls in and drops the rest", "[rng]") {
    Descs c;
    c.w(100).w(100).w(100);
    std::vector<iovec> iov;
    std::size_t total = 0;
    REQUIRE(gather_buffers(c.span(), 150, iov, total) == RequestError::None);
    CHECK(total == 150);
    REQUIRE(iov.size() == 2);
    CHECK(iov[1].iov_base == c[1].host);
    CHECK(iov[1].iov_len == 50);
    // A limit on a buffer boundary takes no empty piece of the next buffer.
    REQUIRE(gather_buffers(c.span(), 200, iov, total) == RequestError::None);
    CHECK(total == 200);
    CHECK(iov.size() == 2);
    // Lengths near UINT32_MAX do not overflow the sum.
    Descs huge;
    huge.add(0, true);
    std::vector<Descriptor> d(huge.span().begin(), huge.span().end());
    d[0].len = UINT32_MAX;
    d.push_back(d[0]);
    REQUIRE(gather_buffers(d, MAX_REQUEST_BYTES, iov, total) == RequestError::None);
    CHECK(total == MAX_REQUEST_BYTES);
    REQUIRE(iov.size() == 1);
    CHECK(iov[0].iov_len == MAX_REQUEST_BYTES);
}

TEST_CASE("rng gather_buffers: a device-readable buffer anywhere fails the request, also past the limit", "[rng]") {
    std::vector<iovec> iov;
    std::size_t total = 0;
    for (int where = 0; where < 3; ++where) {
        INFO("readable buffer at " << where);
        Descs c;
        for (int i = 0; i < 3; ++i) c.add(64, i != where);
        CHECK(gather_buffers(c.span(), 16, iov, total) == RequestError::DeviceReadable);
        CHECK(iov.empty());
        CHECK(total == 0);
    }
    CHECK(std::string(to_string(RequestError::DeviceReadable)).find("device-readable") != std::string::npos);
}

// ==========================================================================================
// The host source

TEST_CASE("rng host source: fills small and large buffers (over getrandom's 256-byte atomic limit) with varied bytes", "[rng]") {
    auto src = host_random();
    for (std::size_t n : {std::size_t{1}, std::size_t{64}, std::size_t{257}, std::size_t{1} << 20}) {
        INFO(n << " bytes");
        Bytes b(n, 0);
        REQUIRE(src->fill(std::as_writable_bytes(std::span(b))) == 0);
        if (n >= 64) CHECK(distinct(b) > (n >= 4096 ? 250u : 30u));
    }
    Bytes none;
    CHECK(src->fill(std::as_writable_bytes(std::span(none))) == 0);
}

// ==========================================================================================
// The device

TEST_CASE("rng device: id 4, no feature bits of its own, an empty configuration space", "[rng]") {
    Rig r;
    CHECK(r.dev->device_type() == device_id::ENTROPY);
    CHECK(r.dev->device_type() == 4);
    CHECK(r.dev->device_features() == 0);
    CHECK(r.dev->offered_features() ==
          (bit(feature::VERSION_1) | bit(feature::RING_INDIRECT_DESC) | bit(feature::RING_EVENT_IDX)));
    CHECK(r.dev->queues().size() == 1);
    CHECK(r.dev->queues()[0].max_size() == 256);
    for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{3}, std::uint64_t{0x100}, UINT64_MAX - 3, UINT64_MAX}) {
        std::uint8_t cfg[8];
        std::memset(cfg, 0xcc, sizeof cfg);
        r.dev->read_config(off, cfg);
        CHECK(Bytes(cfg, cfg + 8) == Bytes(8, 0));
        const std::uint8_t junk[4] = {1, 2, 3, 4};
        r.dev->write_config(off, junk);
    }
    std::uint8_t cfg[4] = {9, 9, 9, 9};
    r.dev->read_config(0, cfg);
    CHECK(Bytes(cfg, cfg + 4) == Bytes(4, 0));
}

TEST_CASE("rng device: each request is filled with host random bytes and returned with its length", "[rng]") {
    Rig r;
    r.drv.bring_up();
    const Chain a = r.drv.post(EntropyDevice::REQUESTQ, {writable(64)});
    const Chain b = r.drv.post(EntropyDevice::REQUESTQ, {writable(10), writable(0), writable(4096)});
    r.drv.notify(EntropyDevice::REQUESTQ);
    DriverRings& q = r.drv.rings(EntropyDevice::REQUESTQ);
    REQUIRE(q.used_idx() == 2);
    CHECK(q.nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{a.head, 64});
    CHECK(q.nth_used(1) == std::pair<std::uint32_t, std::uint32_t>{b.head, 4106});
    CHECK(r.drv.irq_raised());
    const Bytes first = r.drv.guest(a.addrs[0], 64);
    CHECK(distinct(first) > 30);
    CHECK_FALSE(all_zero(r.drv.guest(b.addrs[0], 10)));
    CHECK(distinct(r.drv.guest(b.addrs[2], 4096)) > 250);
    CHECK(r.m().entropy_event_count == 2);
    CHECK(r.m().entropy_bytes == 64 + 4106);
    CHECK(r.m().entropy_event_fails == 0);
    CHECK(r.m().host_rng_fails == 0);

    // The same buffer asked again gets other bytes.
    const Chain again = r.drv.post(EntropyDevice::REQUESTQ, {writable(64)});
    r.drv.notify(EntropyDevice::REQUESTQ);
    CHECK(q.used_idx() == 3);
    CHECK(r.drv.guest(again.addrs[0], 64) != first);
}

TEST_CASE("rng device: an empty buffer is returned with length 0 and is no failure", "[rng]") {
    Rig r;
    r.drv.bring_up();
    const Chain c = r.drv.post(EntropyDevice::REQUESTQ, {writable(0)});
    r.drv.notify(EntropyDevice::REQUESTQ);
    CHECK(r.drv.rings(0).nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{c.head, 0});
    CHECK(r.m().entropy_event_count == 1);
    CHECK(r.m().entropy_event_fails == 0);
}

TEST_CASE("rng device: a huge request gets MAX_REQUEST_BYTES and nothing past them is written", "[rng]") {
    Rig r;
    r.drv.bring_up();
    constexpr std::uint32_t len = 3 * MAX_REQUEST_BYTES;
    const Chain c = r.drv.post(EntropyDevice::REQUESTQ, {writable(len)});
    r.drv.notify(EntropyDevice::REQUESTQ);
    CHECK(r.drv.rings(0).nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{c.head, MAX_REQUEST_BYTES});
    CHECK(distinct(r.drv.guest(c.addrs[0], MAX_REQUEST_BYTES)) == 256);
    CHECK(all_zero(r.drv.guest(c.addrs[0] + MAX_REQUEST_BYTES, len - MAX_REQUEST_BYTES)));
    CHECK(r.m().entropy_bytes == MAX_REQUEST_BYTES);
}

TEST_CASE("rng device: one buffer as long as guest RAM repeated over the whole queue costs the limit, not the sum", "[rng]") {
    auto src = std::make_unique<CountingSource>();
    CountingSource* counting = src.get();
    Rig r(std::move(src));
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    // 16 descriptors, each all the RAM past the rings, chained: 15 MiB asked.
    for (std::uint16_t i = 0; i < 16; ++i)
        q.set_desc(i, kDataAddr, static_cast<std::uint32_t>(kRamBytes - kDataAddr),
                   static_cast<std::uint16_t>(desc_flag::WRITE | (i < 15 ? desc_flag::NEXT : 0)), static_cast<std::uint16_t>(i + 1));
    q.publish(0);
    r.drv.notify(0);
    REQUIRE(q.used_idx() == 1);
    CHECK(q.nth_used(0).second == MAX_REQUEST_BYTES);
    CHECK(counting->calls == 1);
    CHECK(r.m().entropy_bytes == MAX_REQUEST_BYTES);
    CHECK_FALSE(r.needs_reset());
}

TEST_CASE("rng device: a device-readable buffer fails that request only; the next is served", "[rng]") {
    Rig r;
    r.drv.bring_up();
    const Chain bad = r.drv.post(EntropyDevice::REQUESTQ, {writable(32), readable(Bytes(16, 0xab))});
    const Chain good = r.drv.post(EntropyDevice::REQUESTQ, {writable(32)});
    r.drv.notify(EntropyDevice::REQUESTQ);
    DriverRings& q = r.drv.rings(0);
    REQUIRE(q.used_idx() == 2);
    CHECK(q.nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{bad.head, 0});
    CHECK(q.nth_used(1) == std::pair<std::uint32_t, std::uint32_t>{good.head, 32});
    CHECK(all_zero(r.drv.guest(bad.addrs[0], 32))); // not filled
    CHECK(r.drv.guest(bad.addrs[1], 16) == Bytes(16, 0xab));
    CHECK(r.m().entropy_event_fails == 1);
    CHECK(r.m().entropy_event_count == 2);
    CHECK(r.m().entropy_bytes == 32);
    CHECK_FALSE(r.needs_reset());
}

TEST_CASE("rng device: malformed chains (a loop, a buffer outside RAM, a bad next) are returned unused", "[rng]") {
    Rig r;
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    // Descriptors 8-11 (post() below takes them from 0).
    constexpr std::uint64_t buf = kDataAddr + 0x80000; // far from what post() allocates
    q.set_desc(8, buf, 64, desc_flag::WRITE | desc_flag::NEXT, 8);          // loops onto itself
    q.set_desc(9, kRamBytes - 16, 64, desc_flag::WRITE);                    // runs past RAM
    q.set_desc(10, buf, 64, desc_flag::WRITE | desc_flag::NEXT, 999);       // next beyond the table
    q.set_desc(11, UINT64_MAX - 8, 64, desc_flag::WRITE);                   // wraps the address space
    for (std::uint16_t h = 8; h < 12; ++h) q.publish(h);
    const Chain good = r.drv.post(EntropyDevice::REQUESTQ, {writable(8)});
    r.drv.notify(0);
    REQUIRE(q.used_idx() == 5);
    for (std::uint16_t i = 0; i < 4; ++i) CHECK(q.nth_used(i) == std::pair<std::uint32_t, std::uint32_t>{8u + i, 0});
    CHECK(q.nth_used(4) == std::pair<std::uint32_t, std::uint32_t>{good.head, 8});
    CHECK(r.m().entropy_event_fails == 4);
    CHECK(all_zero(r.drv.guest(buf, 64)));
    CHECK_FALSE(r.needs_reset());
}

TEST_CASE("rng device: a broken ring fails the device, which serves nothing until the driver resets it", "[rng]") {
    Rig r;
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    q.set_avail_idx(static_cast<std::uint16_t>(q.avail_idx() + 17)); // more than the queue size ahead
    r.drv.notify(0);
    CHECK(r.needs_reset());
    CHECK_FALSE(r.dev->running());
    CHECK(q.used_idx() == 0);
    CHECK(r.m().entropy_event_fails == 1);
    CHECK((r.dev->interrupt_status() & INT_CONFIG) != 0);
    // A head beyond the queue is broken too.
    Rig r2;
    r2.drv.bring_up();
    r2.drv.rings(0).publish(40);
    r2.drv.notify(0);
    CHECK(r2.needs_reset());
}

TEST_CASE("rng device: a failing host source returns the request empty and counts host_rng_fails", "[rng]") {
    Rig r(std::make_unique<CountingSource>(EAGAIN));
    r.drv.bring_up();
    const Chain c = r.drv.post(EntropyDevice::REQUESTQ, {writable(16), writable(16)});
    r.drv.notify(0);
    CHECK(r.drv.rings(0).nth_used(0) == std::pair<std::uint32_t, std::uint32_t>{c.head, 0});
    CHECK(r.m().host_rng_fails == 1);
    CHECK(r.m().entropy_event_fails == 1);
    CHECK(r.m().entropy_bytes == 0);
    CHECK_FALSE(r.needs_reset());
}

TEST_CASE("rng device: with EVENT_IDX, chains published while serving are served in the same pass", "[rng]") {
    Rig r;
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    (void)r.drv.post(0, {writable(8)});
    r.drv.notify(0);
    CHECK(q.used_idx() == 1);
    // The device asked to be notified after the chains it consumed.
    CHECK(q.avail_event() == 1);
    CHECK(r.m().entropy_event_count == 1);
}

TEST_CASE("rng device: the bytes bucket holds requests back in the ring and its timer resumes them", "[rng]") {
    // 1000 bytes per 100 ms, starting full: the first 600-byte request at once, the second
    // waits for 200 more bytes, the third and fourth for 600 each.
    Rig r(std::make_unique<CountingSource>(), EntropyConfig{RateLimiterConfig{TokenBucketConfig{1000, 0, 100}, std::nullopt}});
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    std::vector<Chain> posted;
    for (int i = 0; i < 4; ++i) posted.push_back(r.drv.post(0, {writable(600)}));
    const auto t0 = std::chrono::steady_clock::now();
    r.drv.notify(0);
    CHECK(q.used_idx() == 1);
    CHECK(r.m().entropy_rate_limiter_throttled == 1);
    // A notification while the limiter is blocked serves nothing.
    r.drv.notify(0);
    CHECK(q.used_idx() == 1);
    CHECK(r.m().entropy_rate_limiter_throttled == 2);
    // The timer resumes the queue without another notification.
    REQUIRE(r.run_until([&] { return q.used_idx() == 4; }));
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= std::chrono::milliseconds(120)); // (3 * 600 - 400) bytes at 10 bytes/ms
    for (std::uint16_t i = 0; i < 4; ++i)
        CHECK(q.nth_used(i) == std::pair<std::uint32_t, std::uint32_t>{posted[i].head, 600});
    CHECK_FALSE(all_zero(r.drv.guest(posted[3].addrs[0], 600)));
    CHECK(r.m().entropy_bytes == 2400);
    CHECK(r.m().entropy_event_count == 4); // a request put back is counted once, when served
    CHECK(r.m().rate_limiter_event_count >= 1);
    CHECK(r.dev->config().rate_limiter->bandwidth == TokenBucketConfig{1000, 0, 100});
}

TEST_CASE("rng device: the ops bucket bounds requests per second; empty requests cost nothing", "[rng]") {
    // 1 request per 100 ms, starting full.
    Rig r(std::make_unique<CountingSource>(), EntropyConfig{RateLimiterConfig{std::nullopt, TokenBucketConfig{1, 0, 100}}});
    r.drv.bring_up();
    DriverRings& q = r.drv.rings(0);
    (void)r.drv.post(0, {writable(0)});
    for (int i = 0; i < 3; ++i) (void)r.drv.post(0, {writable(8)});
    const auto t0 = std::chrono::steady_clock::now();
    r.drv.notify(0);
    CHECK(q.used_idx() == 2); // the empty one, then one op
    REQUIRE(r.run_until([&] { return q.used_idx() == 4; }));
    CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(150)); // 2 more ops at 10/s
    CHECK(r.m().entropy_bytes == 24);
    CHECK(r.m().entropy_rate_limiter_throttled >= 1);
}

TEST_CASE("rng device: metrics carry Firecracker's entropy counter names", "[rng]") {
    Rig r;
    std::vector<std::string> names;
    for (const auto& [n, v] : r.m().values()) names.emplace_back(n);
    CHECK(names == std::vector<std::string>{"activate_fails", "entropy_event_fails", "entropy_event_count", "entropy_bytes",
                                            "host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count"});
}

// ==========================================================================================
// Saved state

TEST_CASE("state: virtio-rng restored behaves as the original", "[state][rng]") {
    Rig r(std::make_unique<CountingSource>(0, 7));
    r.drv.bring_up();
    (void)r.drv.post(0, {writable(5)});
    r.drv.notify(0);
    (void)r.drv.post(0, {writable(3), writable(4)}); // posted, not notified yet
    const EntropyState s = r.dev->save();
    CHECK(s.virtio.queues.size() == 1);
    CHECK(s.virtio.queues[0].next_used == 1);
    CHECK(s.virtio.interrupt_status == INT_USED_RING);

    GuestMemory mem2 = clone_ram(r.mem);
    // The restored source continues where the original one is now, so both write the same bytes.
    auto dev2 = EntropyDevice::restore(mem2, r.io, EntropyConfig{}, std::make_unique<CountingSource>(0, 7 + 5), s);
    VirtioDriver drv2 = r.drv.moved_to(mem2, *dev2);
    CHECK(dev2->save() == s);
    CHECK(drv2.irq_raised()); // the pending used-buffer interrupt is raised again
    // Restoring notifies the active queue once, for a notification that may have been in flight.
    CHECK(drv2.serve_notifications() == std::vector<std::size_t>{0});
    r.drv.notify(0);
    for (VirtioDriver* d : {&r.drv, &drv2}) {
        (void)d->post(0, {writable(9)});
        d->notify(0);
    }
    CHECK(drv2.rings(0).used_idx() == 3);
    CHECK(same_ram(r.mem, mem2));
    CHECK(dev2->save() == r.dev->save());
}

TEST_CASE("state: a virtio-rng state that does not fit is refused", "[state][rng]") {
    Rig r;
    r.drv.bring_up();
    const EntropyState s = r.dev->save();
    GuestMemory mem2 = clone_ram(r.mem);
    EntropyState two = s;
    two.virtio.queues.push_back(two.virtio.queues[0]);
    CHECK_CONFIG_ERROR(EntropyDevice::restore(mem2, r.io, EntropyConfig{}, host_random(), two), "queue");
    EntropyState feature = s;
    feature.virtio.virtio.acked_features |= bit(3); // never offered
    CHECK_CONFIG_ERROR(EntropyDevice::restore(mem2, r.io, EntropyConfig{}, host_random(), feature), "negotiated features");
    EntropyState outside = s;
    outside.virtio.queues[0].used_addr = GuestAddr(kRamBytes - 8);
    CHECK_THROWS_AS(EntropyDevice::restore(mem2, r.io, EntropyConfig{}, host_random(), outside), ConfigError);
}
