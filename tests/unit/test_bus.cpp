// PIO/MMIO bus dispatch (vmm/base/bus.hpp).

#include "vmm/base/bus.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

using namespace ember;

namespace {

// Records every access; reads return the low byte of offset + i.
class Recorder final : public BusDevice {
public:
    struct Access {
        bool write;
        std::uint64_t offset;
        std::vector<std::uint8_t> data;
    };
    void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept override {
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>((offset + i) & 0xff);
        log.push_back({false, offset, {data.begin(), data.end()}});
    }
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override {
        log.push_back({true, offset, {data.begin(), data.end()}});
    }
    std::vector<Access> log;
};

std::shared_ptr<Recorder> dev() { return std::make_shared<Recorder>(); }

} // namespace

TEST_CASE("bus dispatches to the device with offsets relative to its base") {
    Bus bus("pio");
    auto a = dev(), b = dev();
    bus.insert(0x3f8, 8, a, "serial");
    bus.insert(0x60, 5, b, "i8042");

    std::uint8_t one[1] = {0};
    CHECK(bus.read(0x3fd, one));
    CHECK(one[0] == 5);
    REQUIRE(a->log.size() == 1);
    CHECK_FALSE(a->log[0].write);
    CHECK(a->log[0].offset == 5);

    const std::uint8_t v[1] = {0xfe};
    CHECK(bus.write(0x64, v));
    REQUIRE(b->log.size() == 1);
    CHECK(b->log[0].write);
    CHECK(b->log[0].offset == 4);
    CHECK(b->log[0].data == std::vector<std::uint8_t>{0xfe});

    std::uint8_t four[4] = {};
    CHECK(bus.read(0x3f8 + 2, four));
    CHECK(a->log.back().offset == 2);
    CHECK(a->log.back().data.size() == 4);
    CHECK(four[3] == 5);

    CHECK(bus.unclaimed_reads() == 0);
    CHECK(bus.unclaimed_writes() == 0);
    CHECK(bus.name() == "pio");
}

TEST_CASE("bus lookups at the exact first and last byte of a range") {
    Bus bus("mmio");
    auto a = dev();
    bus.insert(0x1000, 0x100, a, "dev");
    std::uint8_t b[1];
    CHECK(bus.read(0x1000, b));
    CHECK(a->log.back().offset == 0);
    CHECK(bus.read(0x10ff, b));
    CHECK(a->log.back().offset == 0xff);
    CHECK_FALSE(bus.read(0x0fff, b));
    CHECK_FALSE(bus.read(0x1100, b));
    CHECK(a->log.size() == 2);
    CHECK(bus.unclaimed_reads() == 2);
}

TEST_CASE("bus ranges at the very top of the address space") {
    Bus bus("mmio");
    auto a = dev();
    bus.insert(UINT64_MAX - 0xff, 0x100, a, "top");
    std::uint8_t b[2];
    CHECK(bus.read(UINT64_MAX - 1, b));
    CHECK(a->log.back().offset == 0xfe);
    std::uint8_t one[1];
    CHECK(bus.read(UINT64_MAX, one));
    CHECK(a->log.back().offset == 0xff);
    CHECK_FALSE(bus.read(UINT64_MAX, b)); // would run past 2^64
}

TEST_CASE("bus rejects overlapping ranges") {
    Bus bus("pio");
    bus.insert(0x100, 0x10, dev(), "a"); // [0x100, 0x10f]
    SECTION("overlapping the start") { CHECK_THROWS_AS(bus.insert(0xf8, 0x10, dev(), "b"), std::invalid_argument); }
    SECTION("overlapping the end") { CHECK_THROWS_AS(bus.insert(0x10f, 0x10, dev(), "b"), std::invalid_argument); }
    SECTION("containing") { CHECK_THROWS_AS(bus.insert(0x80, 0x100, dev(), "b"), std::invalid_argument); }
    SECTION("contained") { CHECK_THROWS_AS(bus.insert(0x104, 2, dev(), "b"), std::invalid_argument); }
    SECTION("identical") { CHECK_THROWS_AS(bus.insert(0x100, 0x10, dev(), "b"), std::invalid_argument); }
    SECTION("one byte at the last address") { CHECK_THROWS_AS(bus.insert(0x10f, 1, dev(), "b"), std::invalid_argument); }
    SECTION("the message names both devices") {
        CHECK_THROWS_WITH(bus.insert(0x108, 0x10, dev(), "b"), Catch::Contains("b") && Catch::Contains("overlaps a"));
    }
    SECTION("between two existing ranges, touching both") {
        bus.insert(0x200, 0x10, dev(), "c");
        CHECK_THROWS_AS(bus.insert(0x10f, 0xf2, dev(), "b"), std::invalid_argument);
        CHECK_THROWS_AS(bus.insert(0x110, 0xf1, dev(), "b"), std::invalid_argument);
        CHECK_NOTHROW(bus.insert(0x110, 0xf0, dev(), "b"));
    }
}

TEST_CASE("bus rejects zero-length and wrapping ranges") {
    Bus bus("mmio");
    CHECK_THROWS_AS(bus.insert(0x100, 0, dev(), "empty"), std::invalid_argument);
    CHECK_THROWS_WITH(bus.insert(0x100, 0, dev(), "empty"), Catch::Contains("zero length"));
    CHECK_THROWS_AS(bus.insert(UINT64_MAX, 2, dev(), "wrap"), std::invalid_argument);
    CHECK_THROWS_AS(bus.insert(UINT64_MAX - 0xf, 0x11, dev(), "wrap"), std::invalid_argument);
    CHECK_THROWS_WITH(bus.insert(2, UINT64_MAX, dev(), "wrap"), Catch::Contains("wraps"));
    CHECK_NOTHROW(Bus("other").insert(1, UINT64_MAX, dev(), "all but byte 0")); // ends exactly at 2^64 - 1
    CHECK_NOTHROW(bus.insert(UINT64_MAX - 0xf, 0x10, dev(), "top"));
    CHECK_NOTHROW(bus.insert(0, 0x10, dev(), "bottom"));
}

TEST_CASE("bus accepts adjacent ranges and dispatches each to its own device") {
    Bus bus("pio");
    auto a = dev(), b = dev(), c = dev();
    bus.insert(0x100, 0x10, a, "a");
    CHECK_NOTHROW(bus.insert(0x110, 0x10, b, "b")); // right after
    CHECK_NOTHROW(bus.insert(0xf0, 0x10, c, "c"));  // right before
    std::uint8_t x[1];
    bus.read(0x10f, x);
    bus.read(0x110, x);
    bus.read(0xff, x);
    REQUIRE(a->log.size() == 1);
    REQUIRE(b->log.size() == 1);
    REQUIRE(c->log.size() == 1);
    CHECK(a->log[0].offset == 0xf);
    CHECK(b->log[0].offset == 0);
    CHECK(c->log[0].offset == 0xf);
}

TEST_CASE("an access straddling a device's end is unclaimed") {
    Bus bus("mmio");
    auto a = dev(), b = dev();
    bus.insert(0x1000, 0x10, a, "a");
    bus.insert(0x1010, 0x10, b, "b");
    std::uint8_t four[4] = {1, 2, 3, 4};
    CHECK_FALSE(bus.read(0x100e, four)); // 2 bytes in a, 2 in b
    CHECK(four[0] == 0xff);
    CHECK(four[3] == 0xff);
    const std::uint8_t w[4] = {};
    CHECK_FALSE(bus.write(0x100e, w));
    CHECK(a->log.empty());
    CHECK(b->log.empty());
    CHECK(bus.unclaimed_reads() == 1);
    CHECK(bus.unclaimed_writes() == 1);
    // Ending exactly at the last byte is fine.
    CHECK(bus.read(0x100c, four));
}

TEST_CASE("unclaimed reads fill 0xff and are counted; unclaimed writes are counted") {
    Bus bus("pio");
    std::uint8_t b[4] = {0, 1, 2, 3};
    CHECK_FALSE(bus.read(0x80, b));
    CHECK(b[0] == 0xff);
    CHECK(b[1] == 0xff);
    CHECK(b[2] == 0xff);
    CHECK(b[3] == 0xff);
    CHECK(bus.unclaimed_reads() == 1);
    CHECK(bus.unclaimed_writes() == 0);
    const std::uint8_t w[1] = {0};
    CHECK_FALSE(bus.write(0x80, w));
    CHECK_FALSE(bus.write(0x81, w));
    CHECK(bus.unclaimed_writes() == 2);
    CHECK(bus.unclaimed_reads() == 1);
}

TEST_CASE("zero-length accesses are never dispatched") {
    Bus bus("pio");
    auto a = dev();
    bus.insert(0x100, 0x10, a, "a");
    CHECK_FALSE(bus.read(0x100, std::span<std::uint8_t>()));
    CHECK_FALSE(bus.write(0x100, std::span<const std::uint8_t>()));
    CHECK(a->log.empty());
}
