// Split virtqueue, device side (devices/virtio/queue.hpp): activation checks, chain walks over
// well-formed and hostile rings, used ring updates, interrupt suppression and index wrap-around.

#include "devices/virtio/queue.hpp"
#include "devices/virtio/spec.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using ember::test::DriverRings;
using ember::test::kAvailAddr;
using ember::test::kDataAddr;
using ember::test::kDescAddr;
using ember::test::kRamBytes;
using ember::test::kUsedAddr;

namespace {

constexpr std::uint16_t NEXT = desc_flag::NEXT;
constexpr std::uint16_t WRITE = desc_flag::WRITE;
constexpr std::uint16_t INDIRECT = desc_flag::INDIRECT;
constexpr std::uint64_t kIndirectAddr = 0x8000; // indirect tables live here

// A guest memory, a queue of max size 256 and the driver's view of its rings.
struct Fixture {
    GuestMemory mem = ember::test::make_test_ram(); // first: the rings below refer to it
    explicit Fixture(std::uint16_t size = 8, std::uint16_t max = 256) : q(max), d(mem, size) {}

    // Programs and activates; REQUIREs success.
    void start(bool event_idx = false, bool indirect = false) {
        d.program(q);
        const std::string err = q.activate(mem, event_idx, indirect);
        REQUIRE(err.empty());
        REQUIRE(q.active());
    }
    // Programs with the given layout and returns activate()'s verdict.
    std::string try_activate(DriverRings rings) {
        rings.program(q);
        return q.activate(mem, false, false);
    }

    Queue q;
    DriverRings d;
};

std::uint64_t buf(unsigned i) { return kDataAddr + 0x1000 * std::uint64_t{i}; }

} // namespace

TEST_CASE("queue: a freshly constructed queue is inactive and reports its maximum", "[virtio]") {
    Queue q(64);
    CHECK(q.max_size() == 64);
    CHECK(q.state().size == 64);
    CHECK_FALSE(q.ready());
    CHECK_FALSE(q.active());
    CHECK(q.pop().status == Queue::PopStatus::Empty);
    CHECK_FALSE(q.needs_interrupt());
    CHECK_FALSE(q.enable_notification());
}

TEST_CASE("queue: activation refuses bad sizes", "[virtio]") {
    for (std::uint16_t size : {std::uint16_t{0}, std::uint16_t{3}, std::uint16_t{6}, std::uint16_t{255}, std::uint16_t{512},
                               std::uint16_t{32768}}) {
        INFO("size " << size);
        Fixture f(size, 256);
        const std::string err = f.try_activate(DriverRings(f.mem, size));
        CHECK_FALSE(err.empty());
        CHECK_FALSE(f.q.active());
        CHECK(f.q.pop().status == Queue::PopStatus::Empty);
    }
    for (std::uint16_t size : {std::uint16_t{1}, std::uint16_t{2}, std::uint16_t{128}, std::uint16_t{256}}) {
        INFO("size " << size);
        Fixture f(size, 256);
        CHECK(f.try_activate(DriverRings(f.mem, size)).empty());
        CHECK(f.q.active());
    }
}

TEST_CASE("queue: activation refuses misaligned rings", "[virtio]") {
    Fixture f;
    CHECK(f.try_activate(DriverRings(f.mem, 8, kDescAddr + 8, kAvailAddr, kUsedAddr)).find("16-byte") != std::string::npos);
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 8, kDescAddr, kAvailAddr + 1, kUsedAddr)).find("2-byte") != std::string::npos);
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 8, kDescAddr, kAvailAddr, kUsedAddr + 2)).find("4-byte") != std::string::npos);
    CHECK_FALSE(f.q.active());
    // The minimum alignments themselves are fine.
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 8, kDescAddr + 16, kAvailAddr + 2, kUsedAddr + 4)).empty());
    CHECK(f.q.active());
}

TEST_CASE("queue: activation refuses rings outside guest RAM", "[virtio]") {
    Fixture f(16);
    // Each ring placed so that it ends exactly at the end of RAM is fine...
    CHECK(f.try_activate(DriverRings(f.mem, 16, kRamBytes - 16 * 16, kAvailAddr, kUsedAddr)).empty());
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 16, kDescAddr, kRamBytes - (6 + 2 * 16), kUsedAddr)).empty());
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 16, kDescAddr, kAvailAddr, kRamBytes - (6 + 8 * 16) - 2)).empty());
    f.q.reset();
    // ...one entry further is not (the event fields count too).
    CHECK(f.try_activate(DriverRings(f.mem, 16, kRamBytes - 15 * 16, kAvailAddr, kUsedAddr)).find("descriptor table") !=
          std::string::npos);
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 16, kDescAddr, kRamBytes - (6 + 2 * 16) + 2, kUsedAddr)).find("available") !=
          std::string::npos);
    f.q.reset();
    CHECK(f.try_activate(DriverRings(f.mem, 16, kDescAddr, kAvailAddr, kRamBytes - (6 + 8 * 16) + 2)).find("used") !=
          std::string::npos);
    f.q.reset();
    // High halves of the addresses count: 4 GiB + kDescAddr is not RAM.
    CHECK_FALSE(f.try_activate(DriverRings(f.mem, 16, (std::uint64_t{1} << 32) + kDescAddr, kAvailAddr, kUsedAddr)).empty());
    f.q.reset();
    CHECK_FALSE(f.try_activate(DriverRings(f.mem, 16, kDescAddr, kAvailAddr, 0xfffffffffffffff0ULL)).empty());
    CHECK_FALSE(f.q.active());
}

TEST_CASE("queue: configuration is frozen while the queue is ready", "[virtio]") {
    Fixture f(8);
    f.d.program(f.q);
    REQUIRE(f.q.ready());
    f.q.set_size(4);
    f.q.set_desc_addr(0x5000, false);
    f.q.set_avail_addr(0x5000, false);
    f.q.set_used_addr(0x5000, true);
    CHECK(f.q.state().size == 8);
    CHECK(f.q.state().desc_addr.raw() == kDescAddr);
    CHECK(f.q.state().avail_addr.raw() == kAvailAddr);
    CHECK(f.q.state().used_addr.raw() == kUsedAddr);
    f.q.set_ready(false);
    f.q.set_size(4);
    f.q.set_used_addr(0x1, true);
    CHECK(f.q.state().size == 4);
    CHECK(f.q.state().used_addr.raw() == ((std::uint64_t{1} << 32) | kUsedAddr));
}

TEST_CASE("queue: direct chains are walked in order with their directions", "[virtio]") {
    Fixture f(8);
    f.start();
    CHECK(f.q.pop().status == Queue::PopStatus::Empty);

    // A single read-only descriptor.
    f.d.set_desc(5, buf(0), 100);
    f.d.publish(5);
    // A three-descriptor chain: readable, writable, writable, linked out of order.
    f.d.set_desc(1, buf(1), 16, NEXT, 6);
    f.d.set_desc(6, buf(2), 512, NEXT | WRITE, 2);
    f.d.set_desc(2, buf(3), 1, WRITE);
    f.d.publish(1);

    auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.head == 5);
    CHECK(r.error == nullptr);
    REQUIRE(r.descs.size() == 1);
    CHECK(r.descs[0].addr.raw() == buf(0));
    CHECK(r.descs[0].len == 100);
    CHECK_FALSE(r.descs[0].device_writable);
    CHECK(r.descs[0].host == f.d.host(buf(0)));
    CHECK(f.q.pending() == 1);

    r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.head == 1);
    REQUIRE(r.descs.size() == 3);
    CHECK(r.descs[0].addr.raw() == buf(1));
    CHECK(r.descs[0].len == 16);
    CHECK_FALSE(r.descs[0].device_writable);
    CHECK(r.descs[1].addr.raw() == buf(2));
    CHECK(r.descs[1].len == 512);
    CHECK(r.descs[1].device_writable);
    CHECK(r.descs[2].addr.raw() == buf(3));
    CHECK(r.descs[2].len == 1);
    CHECK(r.descs[2].device_writable);
    CHECK(r.descs[2].host == f.d.host(buf(3)));
    CHECK(f.q.pending() == 2);
    CHECK(f.q.state().next_avail == 2);

    CHECK(f.q.pop().status == Queue::PopStatus::Empty);
    f.q.add_used(5, 0);
    f.q.add_used(1, 1);
    CHECK(f.q.pending() == 0);
}

TEST_CASE("queue: a chain may use every descriptor of the queue, but no more", "[virtio]") {
    Fixture f(8);
    f.start();
    for (std::uint16_t i = 0; i < 8; ++i)
        f.d.set_desc(i, buf(i), 4, i < 7 ? NEXT : std::uint16_t{0}, static_cast<std::uint16_t>(i + 1));
    f.d.publish(0);
    auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.descs.size() == 8);
    CHECK(r.descs[7].addr.raw() == buf(7));
}

TEST_CASE("queue: zero-length descriptors are accepted, even at the end of RAM", "[virtio]") {
    Fixture f(4);
    f.start();
    f.d.set_desc(0, kRamBytes, 0);
    f.d.publish(0);
    auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.descs[0].len == 0);
}

TEST_CASE("queue: descriptor loops are bounded and reported as bad chains", "[virtio]") {
    Fixture f(8);
    f.start();
    SECTION("two descriptors pointing at each other") {
        f.d.set_desc(0, buf(0), 16, NEXT, 1);
        f.d.set_desc(1, buf(1), 16, NEXT, 0);
    }
    SECTION("a descriptor pointing at itself") { f.d.set_desc(0, buf(0), 16, NEXT, 0); }
    SECTION("a long chain whose tail loops back to its middle") {
        for (std::uint16_t i = 0; i < 8; ++i) f.d.set_desc(i, buf(i), 16, NEXT, static_cast<std::uint16_t>(i + 1));
        f.d.set_desc(7, buf(7), 16, NEXT, 3);
    }
    f.d.publish(0);
    const auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    CHECK(r.head == 0);
    REQUIRE(r.error != nullptr);
    CHECK(std::string(r.error).find("longer than the queue") != std::string::npos);
    // The bad chain was consumed: the driver gets it back and the queue goes on.
    CHECK(f.q.pending() == 1);
    f.q.add_used(r.head, 0);
    CHECK(f.d.used_idx() == 1);
    f.d.set_desc(4, buf(4), 16);
    f.d.publish(4);
    const auto next = f.q.pop();
    CHECK(next.status == Queue::PopStatus::Chain);
    CHECK(next.head == 4);
}

TEST_CASE("queue: a next index beyond the queue is a bad chain", "[virtio]") {
    Fixture f(8);
    f.start();
    f.d.set_desc(0, buf(0), 16, NEXT, 8);
    f.d.publish(0);
    f.d.set_desc(1, buf(0), 16, NEXT, 0xffff);
    f.d.publish(1);
    auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    CHECK(r.head == 0);
    REQUIRE(r.error != nullptr);
    CHECK(std::string(r.error).find("beyond the table") != std::string::npos);
    r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    CHECK(r.head == 1);
    // next without NEXT set is ignored.
    f.d.set_desc(2, buf(0), 16, 0, 0xffff);
    f.d.publish(2);
    CHECK(f.q.pop().status == Queue::PopStatus::Chain);
}

TEST_CASE("queue: a head index beyond the queue breaks the ring", "[virtio]") {
    Fixture f(8);
    f.start();
    f.d.publish(8);
    auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::Broken);
    REQUIRE(r.error != nullptr);
    // Nothing was consumed: it stays broken.
    CHECK(f.q.state().next_avail == 0);
    CHECK(f.q.pop().status == Queue::PopStatus::Broken);
    f.d.set_avail_slot(0, 0xffff);
    CHECK(f.q.pop().status == Queue::PopStatus::Broken);
}

TEST_CASE("queue: an available index more than the queue size ahead breaks the ring", "[virtio]") {
    Fixture f(8);
    f.start();
    for (std::uint16_t i = 0; i < 8; ++i) {
        f.d.set_desc(i, buf(i), 16);
        f.d.set_avail_slot(i, i);
    }
    SECTION("size + 1 ahead") {
        f.d.set_avail_idx(9);
        const auto r = f.q.pop();
        CHECK(r.status == Queue::PopStatus::Broken);
        REQUIRE(r.error != nullptr);
        CHECK(std::string(r.error).find("ahead") != std::string::npos);
    }
    SECTION("behind (the driver moved idx backwards)") {
        f.d.set_avail_idx(0xffff);
        CHECK(f.q.pop().status == Queue::PopStatus::Broken);
    }
    SECTION("exactly size ahead is a full ring") {
        f.d.set_avail_idx(8);
        for (std::uint16_t i = 0; i < 8; ++i) {
            const auto r = f.q.pop();
            REQUIRE(r.status == Queue::PopStatus::Chain);
            CHECK(r.head == i);
        }
        CHECK(f.q.pop().status == Queue::PopStatus::Empty);
        CHECK(f.q.pending() == 8);
    }
}

TEST_CASE("queue: buffers outside guest RAM are bad chains", "[virtio]") {
    struct Case {
        const char* what;
        std::uint64_t addr;
        std::uint32_t len;
    };
    const Case cases[] = {
        {"huge length", buf(0), 0xffffffff},
        {"runs past the end of RAM", kRamBytes - 8, 16},
        {"starts past the end of RAM", kRamBytes, 1},
        {"wraps around 2^64", 0xfffffffffffffff8ULL, 16},
        {"high half of the address", (std::uint64_t{1} << 32) + buf(0), 16},
    };
    for (const Case& c : cases) {
        INFO(c.what);
        Fixture f(8);
        f.start();
        f.d.set_desc(3, c.addr, c.len);
        f.d.publish(3);
        const auto r = f.q.pop();
        CHECK(r.status == Queue::PopStatus::BadChain);
        CHECK(r.head == 3);
        REQUIRE(r.error != nullptr);
        CHECK(std::string(r.error).find("outside guest RAM") != std::string::npos);
    }
    // The second descriptor of a chain.
    Fixture f(8);
    f.start();
    f.d.set_desc(3, buf(0), 16, NEXT, 4);
    f.d.set_desc(4, kRamBytes - 1, 2, WRITE);
    f.d.publish(3);
    const auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    CHECK(r.head == 3);
}

TEST_CASE("queue: indirect tables are walked when negotiated", "[virtio]") {
    Fixture f(8);
    f.start(false, true);
    // Three entries in an indirect table, linked out of order.
    f.d.set_desc_at(kIndirectAddr, 0, buf(0), 16, NEXT, 2);
    f.d.set_desc_at(kIndirectAddr, 2, buf(1), 4096, NEXT | WRITE, 1);
    f.d.set_desc_at(kIndirectAddr, 1, buf(2), 1, WRITE);
    f.d.set_desc(3, kIndirectAddr, 3 * 16, INDIRECT);
    f.d.publish(3);
    const auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.head == 3);
    REQUIRE(r.descs.size() == 3);
    CHECK(r.descs[0].addr.raw() == buf(0));
    CHECK_FALSE(r.descs[0].device_writable);
    CHECK(r.descs[1].addr.raw() == buf(1));
    CHECK(r.descs[1].len == 4096);
    CHECK(r.descs[1].device_writable);
    CHECK(r.descs[2].addr.raw() == buf(2));
    CHECK(r.descs[2].host == f.d.host(buf(2)));
}

TEST_CASE("queue: an indirect table may be preceded by direct descriptors", "[virtio]") {
    Fixture f(8);
    f.start(false, true);
    f.d.set_desc_at(kIndirectAddr, 0, buf(1), 512, WRITE);
    f.d.set_desc(0, buf(0), 16, NEXT, 1);
    f.d.set_desc(1, kIndirectAddr, 16, INDIRECT);
    f.d.publish(0);
    const auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    REQUIRE(r.descs.size() == 2);
    CHECK(r.descs[0].addr.raw() == buf(0));
    CHECK(r.descs[1].addr.raw() == buf(1));
}

TEST_CASE("queue: malformed indirect descriptors are bad chains", "[virtio]") {
    Fixture f(8);
    bool negotiated = true;
    std::string why;
    f.d.set_desc_at(kIndirectAddr, 0, buf(0), 16, NEXT, 1);
    f.d.set_desc_at(kIndirectAddr, 1, buf(1), 1, WRITE);
    SECTION("indirect without VIRTIO_F_INDIRECT_DESC") {
        negotiated = false;
        why = "without VIRTIO_F_INDIRECT_DESC";
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("indirect inside an indirect table") {
        why = "inside an indirect table";
        f.d.set_desc_at(kIndirectAddr, 1, kIndirectAddr + 0x100, 16, INDIRECT);
        f.d.set_desc_at(kIndirectAddr + 0x100, 0, buf(1), 1, WRITE);
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("indirect pointing at its own table") {
        why = "inside an indirect table";
        f.d.set_desc_at(kIndirectAddr, 0, kIndirectAddr, 32, INDIRECT);
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("indirect with NEXT") {
        why = "NEXT";
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT | NEXT, 1);
        f.d.set_desc(1, buf(2), 1, WRITE);
    }
    SECTION("length not a multiple of 16") {
        why = "multiple of 16";
        f.d.set_desc(0, kIndirectAddr, 24, INDIRECT);
    }
    SECTION("length zero") {
        why = "multiple of 16";
        f.d.set_desc(0, kIndirectAddr, 0, INDIRECT);
    }
    SECTION("more entries than the queue size") {
        why = "longer than the queue";
        f.d.set_desc(0, kIndirectAddr, 9 * 16, INDIRECT);
    }
    SECTION("huge length") {
        why = "multiple of 16";
        f.d.set_desc(0, kIndirectAddr, 0xffffffff, INDIRECT);
    }
    SECTION("table outside RAM") {
        why = "outside guest RAM";
        f.d.set_desc(0, kRamBytes - 16, 32, INDIRECT);
    }
    SECTION("next beyond the indirect table") {
        why = "beyond the table";
        f.d.set_desc_at(kIndirectAddr, 1, buf(1), 1, WRITE | NEXT, 2);
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("a loop inside the indirect table") {
        why = "longer than the queue";
        f.d.set_desc_at(kIndirectAddr, 1, buf(1), 1, WRITE | NEXT, 0);
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("buffer of an indirect entry outside RAM") {
        why = "outside guest RAM";
        f.d.set_desc_at(kIndirectAddr, 1, kRamBytes, 1, WRITE);
        f.d.set_desc(0, kIndirectAddr, 32, INDIRECT);
    }
    SECTION("chain longer than the queue through an indirect table") {
        // Seven direct descriptors, then an indirect table of eight more.
        why = "longer than the queue";
        for (std::uint16_t i = 0; i < 7; ++i) f.d.set_desc(i, buf(i), 16, NEXT, static_cast<std::uint16_t>(i + 1));
        f.d.set_desc(7, kIndirectAddr + 0x200, 8 * 16, INDIRECT);
        for (std::uint16_t i = 0; i < 8; ++i)
            f.d.set_desc_at(kIndirectAddr + 0x200, i, buf(i), 16, i < 7 ? NEXT : std::uint16_t{0}, static_cast<std::uint16_t>(i + 1));
    }
    f.start(false, negotiated);
    f.d.publish(0);
    const auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    CHECK(r.head == 0);
    REQUIRE(r.error != nullptr);
    INFO("error: " << r.error);
    CHECK(std::string(r.error).find(why) != std::string::npos);
    CHECK(f.q.state().next_avail == 1);
}

TEST_CASE("queue: an indirect table of exactly the queue size is accepted", "[virtio]") {
    Fixture f(8);
    f.start(false, true);
    for (std::uint16_t i = 0; i < 8; ++i)
        f.d.set_desc_at(kIndirectAddr, i, buf(i), 16, i < 7 ? NEXT : std::uint16_t{0}, static_cast<std::uint16_t>(i + 1));
    f.d.set_desc(5, kIndirectAddr, 8 * 16, INDIRECT);
    f.d.publish(5);
    const auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.head == 5);
    CHECK(r.descs.size() == 8);
}

TEST_CASE("queue: one direct descriptor plus a full-size indirect table is one too many", "[virtio]") {
    Fixture f(8);
    f.start(false, true);
    for (std::uint16_t i = 0; i < 8; ++i)
        f.d.set_desc_at(kIndirectAddr, i, buf(i), 16, i < 7 ? NEXT : std::uint16_t{0}, static_cast<std::uint16_t>(i + 1));
    f.d.set_desc(0, buf(0), 16, NEXT, 1);
    f.d.set_desc(1, kIndirectAddr, 8 * 16, INDIRECT);
    f.d.publish(0);
    auto r = f.q.pop();
    CHECK(r.status == Queue::PopStatus::BadChain);
    // Seven entries in the table instead of eight fit exactly.
    f.d.set_desc_at(kIndirectAddr, 6, buf(6), 16);
    f.d.set_desc(1, kIndirectAddr, 7 * 16, INDIRECT);
    f.d.publish(0);
    r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.descs.size() == 8);
}

TEST_CASE("queue: add_used writes id, len and used.idx", "[virtio]") {
    Fixture f(4);
    f.start();
    for (std::uint16_t i = 0; i < 4; ++i) {
        f.d.set_desc(i, buf(i), 16);
        f.d.publish(i);
    }
    for (int i = 0; i < 4; ++i) REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    // Completed out of order.
    f.q.add_used(2, 0x1234);
    CHECK(f.d.used_idx() == 1);
    CHECK(f.d.used_elem(0) == std::pair<std::uint32_t, std::uint32_t>{2, 0x1234});
    f.q.add_used(0, 0);
    f.q.add_used(3, 0xffffffff);
    f.q.add_used(1, 7);
    CHECK(f.d.used_idx() == 4);
    CHECK(f.d.used_elem(1) == std::pair<std::uint32_t, std::uint32_t>{0, 0});
    CHECK(f.d.used_elem(2) == std::pair<std::uint32_t, std::uint32_t>{3, 0xffffffff});
    CHECK(f.d.used_elem(3) == std::pair<std::uint32_t, std::uint32_t>{1, 7});
    CHECK(f.q.state().next_used == 4);
    CHECK(f.q.pending() == 0);
    // The fifth completion goes to slot 0 again.
    f.d.publish(1);
    REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    f.q.add_used(1, 99);
    CHECK(f.d.used_idx() == 5);
    CHECK(f.d.used_elem(0) == std::pair<std::uint32_t, std::uint32_t>{1, 99});
    // The device never touches used.flags.
    CHECK(f.d.used_flags() == 0);
}

TEST_CASE("queue: 16-bit ring indexes wrap around", "[virtio]") {
    Fixture f(4);
    f.start();
    for (std::uint16_t i = 0; i < 4; ++i) f.d.set_desc(i, buf(i), 16);
    // Single chains up to just before the wrap.
    for (unsigned n = 0; n < 65533; ++n) {
        const auto head = static_cast<std::uint16_t>(n % 4);
        f.d.publish(head);
        const auto r = f.q.pop();
        if (r.status != Queue::PopStatus::Chain || r.head != head) FAIL("pop " << n << " failed");
        f.q.add_used(head, n);
    }
    CHECK(f.q.state().next_avail == 65533);
    CHECK(f.d.used_idx() == 65533);
    // A full ring's worth of chains that crosses the wrap: idx goes 65533 -> 1.
    for (std::uint16_t i = 0; i < 4; ++i) f.d.publish(i);
    CHECK(f.d.avail_idx() == 1);
    for (std::uint16_t i = 0; i < 4; ++i) {
        const auto r = f.q.pop();
        REQUIRE(r.status == Queue::PopStatus::Chain);
        CHECK(r.head == i);
    }
    CHECK(f.q.pop().status == Queue::PopStatus::Empty);
    CHECK(f.q.pending() == 4);
    for (std::uint16_t i = 0; i < 4; ++i) f.q.add_used(i, 1000u + i);
    CHECK(f.d.used_idx() == 1);
    CHECK(f.q.state().next_used == 1);
    // 65533 % 4 == 1: the four completions land in slots 1, 2, 3, 0.
    CHECK(f.d.used_elem(1) == std::pair<std::uint32_t, std::uint32_t>{0, 1000});
    CHECK(f.d.used_elem(0) == std::pair<std::uint32_t, std::uint32_t>{3, 1003});
    // More than a ring ahead across the wrap is still caught.
    f.d.set_avail_idx(static_cast<std::uint16_t>(f.q.state().next_avail + 5));
    CHECK(f.q.pop().status == Queue::PopStatus::Broken);
    f.d.set_avail_idx(static_cast<std::uint16_t>(f.q.state().next_avail + 4));
    CHECK(f.q.pop().status == Queue::PopStatus::Chain);
}

TEST_CASE("queue: needs_interrupt without EVENT_IDX follows VIRTQ_AVAIL_F_NO_INTERRUPT", "[virtio]") {
    Fixture f(4);
    f.start(false, false);
    f.d.set_desc(0, buf(0), 16);
    f.d.publish(0);
    REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    f.q.add_used(0, 0);
    CHECK(f.q.needs_interrupt());
    f.d.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    CHECK_FALSE(f.q.needs_interrupt());
    f.d.set_avail_flags(0);
    CHECK(f.q.needs_interrupt());
    // A used_event value is ignored without EVENT_IDX.
    f.d.set_used_event(1000);
    CHECK(f.q.needs_interrupt());
}

TEST_CASE("queue: needs_interrupt with EVENT_IDX follows used_event", "[virtio]") {
    Fixture f(8);
    f.start(true, false);
    for (std::uint16_t i = 0; i < 8; ++i) f.d.set_desc(i, buf(i), 16);
    auto complete = [&](int n) {
        for (int i = 0; i < n; ++i) {
            f.d.publish(0);
            REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
            f.q.add_used(0, 0);
        }
    };
    // The first batch always interrupts (nothing was signalled before).
    f.d.set_used_event(500);
    complete(1);
    CHECK(f.q.needs_interrupt());
    // Nothing new: no interrupt whatever used_event says.
    f.d.set_used_event(1);
    CHECK_FALSE(f.q.needs_interrupt());
    // Batch 1 -> 2: the driver asked to hear after used entry 0 (already signalled): no.
    complete(1);
    f.d.set_used_event(0);
    CHECK_FALSE(f.q.needs_interrupt());
    // Batch 2 -> 5 with used_event 3: inside [2, 5): yes.
    complete(3);
    f.d.set_used_event(3);
    CHECK(f.q.needs_interrupt());
    // Batch 5 -> 7 with used_event 7 (not reached yet): no. Then 7 -> 8 reaches it.
    complete(2);
    f.d.set_used_event(7);
    CHECK_FALSE(f.q.needs_interrupt());
    complete(1);
    CHECK(f.q.needs_interrupt());
    // Batch 8 -> 9 with used_event 8, the first entry of the batch: yes.
    complete(1);
    f.d.set_used_event(8);
    CHECK(f.q.needs_interrupt());
    // VIRTQ_AVAIL_F_NO_INTERRUPT is ignored with EVENT_IDX (§2.7.7.2).
    complete(1);
    f.d.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    f.d.set_used_event(9);
    CHECK(f.q.needs_interrupt());
    CHECK(f.q.state().signalled_used == 10);
    CHECK(f.q.state().signalled_used_valid);
}

namespace {
// Reference for vring_need_event computed with plain ints: the device moved used.idx from `old`
// to `new_idx` (modulo 2^16), so it wrote entries old, old+1, ..., new_idx-1; the driver wants an
// interrupt once entry `event` is written.
bool need_event_reference(int event, int new_idx, int old) {
    const int written = ((new_idx - old) % 65536 + 65536) % 65536;
    const int offset = ((event - old) % 65536 + 65536) % 65536;
    return offset < written;
}
} // namespace

TEST_CASE("queue: need_event matches a reference across the 16-bit wrap", "[virtio]") {
    static_assert(need_event(0, 1, 0));
    static_assert(!need_event(1, 1, 0));
    static_assert(need_event(65535, 0, 65535));
    static_assert(need_event(0, 2, 65535));
    static_assert(!need_event(2, 2, 65535));
    static_assert(!need_event(5, 5, 5));

    std::set<int> values = {0, 1, 2, 3, 127, 128, 255, 256, 32766, 32767, 32768, 32769, 65533, 65534, 65535};
    for (int k = 0; k < 24; ++k) values.insert((k * 4099 + 17) % 65536);
    std::size_t mismatches = 0, checked = 0;
    for (int old : values)
        for (int nw : values)
            for (int ev : values) {
                ++checked;
                const bool got = need_event(static_cast<std::uint16_t>(ev), static_cast<std::uint16_t>(nw), static_cast<std::uint16_t>(old));
                if (got != need_event_reference(ev, nw, old)) {
                    ++mismatches;
                    UNSCOPED_INFO("event " << ev << " new " << nw << " old " << old);
                }
            }
    // Every event value for windows that straddle the wrap, are empty, or are (almost) full.
    const std::pair<int, int> windows[] = {{65530, 6}, {65535, 0}, {0, 65535}, {100, 100}, {7, 6}, {32768, 0}, {1, 65535}};
    for (const auto& [old, nw] : windows)
        for (int ev = 0; ev < 65536; ++ev) {
            ++checked;
            const bool got = need_event(static_cast<std::uint16_t>(ev), static_cast<std::uint16_t>(nw), static_cast<std::uint16_t>(old));
            if (got != need_event_reference(ev, nw, old)) {
                ++mismatches;
                UNSCOPED_INFO("event " << ev << " new " << nw << " old " << old);
            }
        }
    CHECK(checked > 400000);
    CHECK(mismatches == 0);
}

TEST_CASE("queue: enable_notification publishes avail_event and reports late arrivals", "[virtio]") {
    Fixture f(8);
    f.d.set_avail_event(0xabcd);
    SECTION("with EVENT_IDX") {
        f.start(true, false);
        for (std::uint16_t i = 0; i < 8; ++i) f.d.set_desc(i, buf(i), 16);
        f.d.publish(0);
        f.d.publish(1);
        REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
        // One chain still waiting: enabling notifications says so.
        CHECK(f.q.enable_notification());
        CHECK(f.d.avail_event() == 1);
        REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
        CHECK_FALSE(f.q.enable_notification());
        CHECK(f.d.avail_event() == 2);
        // The driver adds a chain after the device enabled notifications.
        f.d.publish(2);
        CHECK(f.q.enable_notification());
        REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
        CHECK_FALSE(f.q.enable_notification());
        CHECK(f.d.avail_event() == 3);
    }
    SECTION("without EVENT_IDX") {
        f.start(false, false);
        f.d.set_desc(0, buf(0), 16);
        f.d.publish(0);
        CHECK_FALSE(f.q.enable_notification());
        CHECK(f.d.avail_event() == 0xabcd); // untouched: the field does not exist for the driver
    }
}

TEST_CASE("queue: after undo_pop, enable_notification(seen) waits for chains past the given-back ones", "[virtio]") {
    // virtio-net with too few mergeable buffers for a frame gives them back; the chains are still
    // available, so only chains past them may wake the device (else it would retry forever).
    Fixture f(8);
    f.start(true, false);
    for (std::uint16_t i = 0; i < 8; ++i) f.d.set_desc(i, buf(i), 16);
    f.d.publish(0);
    f.d.publish(1);
    REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    REQUIRE(f.q.pop().status == Queue::PopStatus::Empty);
    const std::uint16_t seen = f.q.state().next_avail;
    f.q.undo_pop(2);
    CHECK(f.q.enable_notification()); // the plain form reports the given-back chains
    CHECK_FALSE(f.q.enable_notification(seen));
    CHECK(f.d.avail_event() == seen);
    f.d.publish(2);
    CHECK(f.q.enable_notification(seen));
    // The given-back chains come again, in order, followed by the new one.
    for (std::uint16_t head : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{2}}) {
        const auto r = f.q.pop();
        REQUIRE(r.status == Queue::PopStatus::Chain);
        CHECK(r.head == head);
    }
}

TEST_CASE("queue: reset forgets the rings and every index", "[virtio]") {
    Fixture f(8);
    f.start(true, true);
    for (std::uint16_t i = 0; i < 3; ++i) {
        f.d.set_desc(i, buf(i), 16);
        f.d.publish(i);
        REQUIRE(f.q.pop().status == Queue::PopStatus::Chain);
    }
    f.q.add_used(0, 1);
    REQUIRE(f.q.needs_interrupt());
    f.q.reset();
    CHECK_FALSE(f.q.active());
    CHECK_FALSE(f.q.ready());
    const QueueState& s = f.q.state();
    CHECK(s.size == 256);
    CHECK(s.max_size == 256);
    CHECK(s.desc_addr == GuestAddr(0));
    CHECK(s.avail_addr == GuestAddr(0));
    CHECK(s.used_addr == GuestAddr(0));
    CHECK(s.next_avail == 0);
    CHECK(s.next_used == 0);
    CHECK(s.signalled_used == 0);
    CHECK_FALSE(s.signalled_used_valid);
    CHECK_FALSE(s.event_idx);
    CHECK_FALSE(s.indirect);
    CHECK(f.q.pending() == 0);
    // Inactive: nothing is read or written.
    f.d.publish(3);
    CHECK(f.q.pop().status == Queue::PopStatus::Empty);
    f.q.add_used(1, 1);
    CHECK(f.d.used_idx() == 1);
    CHECK_FALSE(f.q.needs_interrupt());
    // Re-programmed on fresh rings, it starts from index 0 again.
    DriverRings fresh(f.mem, 4, 0x20000, 0x21000, 0x22000);
    fresh.program(f.q);
    REQUIRE(f.q.activate(f.mem, false, false).empty());
    fresh.set_desc(2, buf(2), 16);
    fresh.publish(2);
    const auto r = f.q.pop();
    REQUIRE(r.status == Queue::PopStatus::Chain);
    CHECK(r.head == 2);
    f.q.add_used(2, 5);
    CHECK(fresh.used_idx() == 1);
    CHECK(fresh.used_elem(0) == std::pair<std::uint32_t, std::uint32_t>{2, 5});
}
