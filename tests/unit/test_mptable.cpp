// Intel MP specification 1.4 tables built by build_mptable / write_mptable.

#include "test_util.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/arch/x86_64/mptable.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

using namespace ember;
using ember::layout::MiB;
using ember::test::get;

namespace {

unsigned byte_sum(const std::vector<std::uint8_t>& b, std::size_t from, std::size_t n) {
    REQUIRE(from + n <= b.size());
    return std::accumulate(b.begin() + static_cast<std::ptrdiff_t>(from), b.begin() + static_cast<std::ptrdiff_t>(from + n), 0u) &
           0xffu;
}

constexpr std::size_t FP = 0;      // floating pointer
constexpr std::size_t HDR = 16;    // configuration table header
constexpr std::size_t ENTRIES = HDR + 44;

} // namespace

TEST_CASE("MP table structure for 1, 2, 4 and 32 CPUs") {
    const unsigned n = GENERATE(1u, 2u, 4u, 32u);
    constexpr std::uint32_t base = 0x9fc00;
    CAPTURE(n);
    const auto t = build_mptable(n, base);

    // Floating pointer (§4.1).
    REQUIRE(t.size() > ENTRIES);
    CHECK(std::string(t.begin(), t.begin() + 4) == "_MP_");
    CHECK(get<std::uint32_t>(t, FP + 4) == base + 16);
    CHECK(t[FP + 8] == 1); // length in paragraphs
    CHECK(t[FP + 9] == 4); // revision 1.4
    CHECK(t[FP + 11] == 0); // feature byte 1: 0 = a configuration table is present
    CHECK(byte_sum(t, FP, 16) == 0);

    // Configuration table header (§4.2).
    CHECK(std::string(t.begin() + HDR, t.begin() + HDR + 4) == "PCMP");
    const std::uint16_t len = get<std::uint16_t>(t, HDR + 4);
    CHECK(len == t.size() - HDR);
    CHECK(t[HDR + 6] == 4);
    CHECK(byte_sum(t, HDR, len) == 0);
    CHECK(get<std::uint32_t>(t, HDR + 36) == 0xfee0'0000); // local APIC address
    CHECK(get<std::uint16_t>(t, HDR + 40) == 0);          // no extended table
    const std::uint16_t count = get<std::uint16_t>(t, HDR + 34);
    CHECK(count == n + 1 + 1 + 24 + 2);

    // Walk the entries: processors first, then bus, IOAPIC, 24 interrupt sources, 2 LINT sources.
    std::size_t at = ENTRIES;
    unsigned cpus = 0, buses = 0, ioapics = 0, intsrcs = 0, lintsrcs = 0;
    std::uint8_t ioapic_id = 0;
    for (unsigned e = 0; e < count; ++e) {
        REQUIRE(at < t.size());
        switch (t[at]) {
        case 0: // processor, 20 bytes
            CHECK(t[at + 1] == cpus); // APIC id = vCPU index
            CHECK(t[at + 2] != 0);    // APIC version
            CHECK((t[at + 3] & 0x01) == 0x01);                    // enabled
            CHECK((t[at + 3] & 0x02) == (cpus == 0 ? 0x02 : 0)); // BSP flag only on CPU 0
            ++cpus;
            at += 20;
            break;
        case 1: // bus, 8 bytes
            CHECK(std::string(t.begin() + static_cast<std::ptrdiff_t>(at + 2), t.begin() + static_cast<std::ptrdiff_t>(at + 8)) ==
                  "ISA   ");
            ++buses;
            at += 8;
            break;
        case 2: // IOAPIC, 8 bytes
            ioapic_id = t[at + 1];
            CHECK((t[at + 3] & 1) == 1);
            CHECK(get<std::uint32_t>(t, at + 4) == 0xfec0'0000);
            ++ioapics;
            at += 8;
            break;
        case 3: // I/O interrupt source, 8 bytes: ISA IRQ i -> IOAPIC pin i
            CHECK(t[at + 5] == intsrcs);
            CHECK(t[at + 6] == n + 1);
            CHECK(t[at + 7] == intsrcs);
            ++intsrcs;
            at += 8;
            break;
        case 4: // local interrupt source, 8 bytes
            CHECK(t[at + 6] == 0xff); // all local APICs
            CHECK(t[at + 7] == lintsrcs);
            CHECK(t[at + 1] == (lintsrcs == 0 ? 3 : 1)); // LINT0 ExtINT, LINT1 NMI
            ++lintsrcs;
            at += 8;
            break;
        default:
            FAIL("unknown MP entry type " << int{t[at]} << " at offset " << at);
        }
    }
    CHECK(at == t.size());
    CHECK(cpus == n);
    CHECK(buses == 1);
    CHECK(ioapics == 1);
    CHECK(ioapic_id == n + 1);
    CHECK(intsrcs == 24);
    CHECK(lintsrcs == 2);
}

TEST_CASE("MP table physptr follows the base it is built for") {
    const auto a = build_mptable(2, 0x9fc00);
    const auto b = build_mptable(2, 0xf0000);
    CHECK(get<std::uint32_t>(b, 4) == 0xf0010);
    CHECK(byte_sum(b, 0, 16) == 0);
    CHECK(a[10] != b[10]); // the checksum depends on the pointer
    // The configuration tables are identical.
    CHECK(std::equal(a.begin() + HDR, a.end(), b.begin() + HDR, b.end()));
}

TEST_CASE("MP table rejects unsupported CPU counts") {
    CHECK_THROWS_AS(build_mptable(0, 0x9fc00), ConfigError);
    CHECK_THROWS_AS(build_mptable(255, 0x9fc00), ConfigError);
    CHECK_THROWS_AS(build_mptable(MPTABLE_MAX_CPUS + 1, 0x9fc00), ConfigError);
    CHECK_NOTHROW(build_mptable(MPTABLE_MAX_CPUS, 0x9fc00));
    // The largest table still fits in the EBDA's 1 KiB, and its IOAPIC id is not the broadcast id.
    const auto t = build_mptable(MPTABLE_MAX_CPUS, 0x9fc00);
    CHECK(t.size() <= 0x400);
    CHECK(MPTABLE_MAX_CPUS + 1 < 0xff);
}

TEST_CASE("write_mptable puts the table in the EBDA, below 0xa0000") {
    auto mem = layout::guest_memory(128 * MiB);
    const unsigned n = GENERATE(1u, 32u);
    write_mptable(mem, n);
    const auto want = build_mptable(n, static_cast<std::uint32_t>(layout::MPTABLE));
    REQUIRE(layout::MPTABLE == 0x9fc00);
    CHECK(layout::MPTABLE + want.size() <= 0xa0000);
    std::vector<std::uint8_t> got(want.size());
    REQUIRE(mem.read(GuestAddr(0x9fc00), std::as_writable_bytes(std::span(got))));
    CHECK(got == want);
}

TEST_CASE("write_mptable refuses a table that overflows the EBDA") {
    auto mem = layout::guest_memory(128 * MiB);
    CHECK_THROWS_AS(write_mptable(mem, 200), ConfigError);
}
