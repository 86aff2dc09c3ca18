#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <catch2/catch.hpp>
#include <cstdint>

using namespace ember;
using ember::layout::GiB;
using ember::layout::MiB;

TEST_CASE("guest memory below 3 GiB is one region starting at 0") {
    auto m = layout::guest_memory(256 * MiB);
    REQUIRE(m.regions().size() == 1);
    CHECK(m.regions()[0].range.start().raw() == 0);
    CHECK(m.regions()[0].range.size() == 256 * MiB);
    CHECK(m.low_ram_end().raw() == 256 * MiB);
    // The backing mapping is 2 MiB aligned (huge pages / 2 MiB nested mappings).
    CHECK(reinterpret_cast<std::uintptr_t>(m.backing().get()) % (2 * MiB) == 0);
}

TEST_CASE("guest memory above 3 GiB is split around the MMIO gap") {
    auto m = layout::guest_memory(4 * GiB);
    REQUIRE(m.regions().size() == 2);
    CHECK(m.regions()[0].range.size() == 3 * GiB);
    CHECK(m.regions()[1].range.start().raw() == 4 * GiB);
    CHECK(m.regions()[1].range.size() == 1 * GiB);
    CHECK(m.slice(GuestAddr(3 * GiB - 1), 1));
    CHECK_FALSE(m.slice(GuestAddr(3 * GiB), 1));            // first byte of the gap
    CHECK_FALSE(m.slice(GuestAddr(3 * GiB + 4096), 16));    // inside the gap
    CHECK_FALSE(m.slice(GuestAddr(3 * GiB - 8), 16));       // crosses into the gap
    CHECK(m.slice(GuestAddr(4 * GiB), 16));
    CHECK_FALSE(m.slice(GuestAddr(5 * GiB - 8), 16));       // past the end
    CHECK(m.slice(GuestAddr(5 * GiB - 16), 16));
}

TEST_CASE("slice rejects wrap-around and huge lengths") {
    auto m = layout::guest_memory(16 * MiB);
    CHECK_FALSE(m.slice(GuestAddr(UINT64_MAX), 2));
    CHECK_FALSE(m.slice(GuestAddr(4096), UINT64_MAX));
    CHECK_FALSE(m.slice(GuestAddr(16 * MiB), 1));
    CHECK(m.slice(GuestAddr(16 * MiB), 0));       // an empty range at the end is inside
    CHECK_FALSE(m.slice(GuestAddr(16 * MiB + 1), 0));
}

TEST_CASE("slices of adjacent regions do not merge") {
    auto m = GuestMemory::with_regions({{GuestAddr(0), 8192}, {GuestAddr(8192), 8192}});
    CHECK(m.slice(GuestAddr(0), 8192));
    CHECK(m.slice(GuestAddr(8192), 8192));
    CHECK_FALSE(m.slice(GuestAddr(4096), 8192)); // crosses the region boundary
}

TEST_CASE("read and write objects round-trip and fail outside RAM") {
    auto m = layout::guest_memory(1 * MiB);
    std::uint64_t v = 0x1122334455667788ull, out = 0;
    CHECK(m.write_obj(GuestAddr(0x1000), v));
    CHECK(m.read_obj(GuestAddr(0x1000), out));
    CHECK(out == v);
    CHECK_FALSE(m.write_obj(GuestAddr(1 * MiB - 4), v));
    CHECK_FALSE(m.read_obj(GuestAddr(1 * MiB - 4), out));
}

TEST_CASE("invalid region layouts are rejected") {
    CHECK_THROWS_AS(layout::guest_memory(0), ConfigError);
    CHECK_THROWS_AS(layout::guest_memory(1000), ConfigError);
    CHECK_THROWS_AS(GuestMemory::with_regions({{GuestAddr(0), 8192}, {GuestAddr(4096), 8192}}), ConfigError);
    CHECK_THROWS_AS(GuestMemory::with_regions({{GuestAddr(UINT64_MAX - 4095), 8192}}), ConfigError);
}

TEST_CASE("GuestRange arithmetic") {
    CHECK_FALSE(GuestRange::make(GuestAddr(UINT64_MAX), 2));
    auto top = GuestRange::make(GuestAddr(UINT64_MAX - 9), 10);
    REQUIRE(top);
    CHECK(top->last() == UINT64_MAX);
    CHECK(top->contains(GuestAddr(UINT64_MAX)));
    auto a = *GuestRange::make(GuestAddr(100), 10);
    auto b = *GuestRange::make(GuestAddr(110), 10);
    CHECK_FALSE(a.overlaps(b));
    CHECK(a.overlaps(*GuestRange::make(GuestAddr(109), 1)));
    CHECK_FALSE(GuestAddr(UINT64_MAX).checked_add(1));
}

namespace {
// Pages set in region `index`'s dirty bitmap (taking it clears it).
std::vector<std::uint64_t> dirty_pages(GuestMemory& m, std::size_t index) {
    std::vector<std::uint64_t> pages;
    const auto words = m.take_dirty_bitmap(index);
    for (std::size_t w = 0; w < words.size(); ++w)
        for (unsigned b = 0; b < 64; ++b)
            if (words[w] & (std::uint64_t{1} << b)) pages.push_back(w * 64 + b);
    return pages;
}
using Pages = std::vector<std::uint64_t>;
} // namespace

TEST_CASE("dirty tracking is off until enabled, then marks exactly the pages written") {
    auto m = layout::guest_memory(64 * MiB);
    const std::byte b[8]{};
    REQUIRE(m.write(GuestAddr(0x5000), b));
    m.mark_dirty(GuestAddr(0x9000), 1);
    CHECK(dirty_pages(m, 0).empty()); // off: nothing recorded

    m.enable_dirty_tracking();
    CHECK(m.dirty_tracking());
    REQUIRE(m.write(GuestAddr(0x5000), b));               // page 5
    REQUIRE(m.write(GuestAddr(0x6ffc), b));               // crosses from page 6 into 7
    REQUIRE(m.writable(GuestAddr(0x20000), 0x2001));      // pages 0x20, 0x21 and 0x22
    REQUIRE(m.writable(GuestAddr(0x30000), 0));           // empty: marks nothing
    std::uint64_t v = 0;
    REQUIRE(m.read_obj(GuestAddr(0x40000), v));           // reads mark nothing
    REQUIRE(m.slice(GuestAddr(0x41000), 4096));           // nor does a read slice
    CHECK_FALSE(m.write(GuestAddr(64 * MiB - 4), b));     // refused: past RAM, marks nothing
    CHECK(dirty_pages(m, 0) == Pages{5, 6, 7, 0x20, 0x21, 0x22});
    CHECK(dirty_pages(m, 0).empty()); // taking the bitmap cleared it
    CHECK(m.take_dirty_bitmap(1).empty()); // no second region

    m.disable_dirty_tracking();
    REQUIRE(m.write(GuestAddr(0x5000), b));
    CHECK(dirty_pages(m, 0).empty());
}

TEST_CASE("mark_dirty marks only the RAM part of a range that crosses the MMIO gap") {
    auto m = layout::guest_memory(4 * GiB); // [0, 3 GiB) and [4 GiB, 5 GiB)
    m.enable_dirty_tracking();
    m.mark_dirty(GuestAddr(3 * GiB - 4096), 4096 + GiB + 4096 + 1); // last low page, the gap, 4097 high bytes
    const Pages low = dirty_pages(m, 0);
    CHECK(low == Pages{3 * GiB / 4096 - 1});
    CHECK(dirty_pages(m, 1) == Pages{0, 1});
    m.mark_dirty(GuestAddr(UINT64_MAX - 10), 100); // wraps: nothing of it is RAM
    CHECK(dirty_pages(m, 0).empty());
    CHECK(dirty_pages(m, 1).empty());
}

TEST_CASE("dirty bits survive moving the memory") {
    auto m = layout::guest_memory(16 * MiB);
    m.enable_dirty_tracking();
    const std::byte b[1]{};
    REQUIRE(m.write(GuestAddr(0x3000), b));
    GuestMemory moved = std::move(m);
    CHECK(moved.dirty_tracking());
    REQUIRE(moved.write(GuestAddr(0x4000), b));
    CHECK(dirty_pages(moved, 0) == Pages{3, 4});
}
