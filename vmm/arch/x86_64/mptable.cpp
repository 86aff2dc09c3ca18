#include "vmm/arch/x86_64/mptable.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <cstring>

namespace ember {
namespace {

constexpr std::uint8_t ENTRY_PROCESSOR = 0, ENTRY_BUS = 1, ENTRY_IOAPIC = 2, ENTRY_INTSRC = 3, ENTRY_LINTSRC = 4;
constexpr std::uint8_t INT_TYPE_INT = 0, INT_TYPE_NMI = 1, INT_TYPE_EXTINT = 3;
constexpr std::uint8_t APIC_VERSION = 0x14;   // integrated local APIC
constexpr std::uint8_t IOAPIC_VERSION = 0x11;
constexpr std::size_t FLOATING_SIZE = 16;

class Writer {
public:
    std::vector<std::uint8_t> b;
    template <class T>
    void put(T v) {
        const auto* p = reinterpret_cast<const std::uint8_t*>(&v);
        b.insert(b.end(), p, p + sizeof v);
    }
    void put_str(const char* s, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) b.push_back(static_cast<std::uint8_t>(s[i]));
    }
};

std::uint8_t checksum(const std::uint8_t* p, std::size_t n) {
    unsigned sum = 0;
    for (std::size_t i = 0; i < n; ++i) sum += p[i];
    return static_cast<std::uint8_t>(-sum & 0xff);
}

} // namespace

std::vector<std::uint8_t> build_mptable(unsigned num_cpus, std::uint32_t base) {
    if (num_cpus == 0 || num_cpus > MPTABLE_MAX_CPUS) throw ConfigError("MP table: unsupported CPU count");
    const std::uint8_t ioapic_id = static_cast<std::uint8_t>(num_cpus + 1);
    Writer w;
    // Floating pointer structure (§4.1).
    w.put_str("_MP_", 4);
    w.put<std::uint32_t>(base + FLOATING_SIZE); // physical address of the configuration table
    w.put<std::uint8_t>(1);                      // length in 16-byte units
    w.put<std::uint8_t>(4);                      // spec revision 1.4
    w.put<std::uint8_t>(0);                      // checksum, filled below
    for (int i = 0; i < 5; ++i) w.put<std::uint8_t>(0); // feature bytes: configuration table present
    // Configuration table header (§4.2); length, count and checksum filled below.
    const std::size_t hdr = w.b.size();
    w.put_str("PCMP", 4);
    w.put<std::uint16_t>(0);
    w.put<std::uint8_t>(4);
    w.put<std::uint8_t>(0);
    w.put_str("EMBER   ", 8);
    w.put_str("MICROVM     ", 12);
    w.put<std::uint32_t>(0); // OEM table pointer
    w.put<std::uint16_t>(0); // OEM table size
    w.put<std::uint16_t>(0); // entry count
    w.put<std::uint32_t>(static_cast<std::uint32_t>(layout::LAPIC_ADDR));
    w.put<std::uint16_t>(0); // extended table length
    w.put<std::uint8_t>(0);  // extended table checksum
    w.put<std::uint8_t>(0);
    std::uint16_t entries = 0;
    for (unsigned cpu = 0; cpu < num_cpus; ++cpu) {
        w.put<std::uint8_t>(ENTRY_PROCESSOR);
        w.put<std::uint8_t>(static_cast<std::uint8_t>(cpu)); // local APIC id = vCPU index
        w.put<std::uint8_t>(APIC_VERSION);
        w.put<std::uint8_t>(static_cast<std::uint8_t>(0x01 | (cpu == 0 ? 0x02 : 0))); // enabled, BSP
        w.put<std::uint32_t>(0x600);   // CPU signature: family 6
        w.put<std::uint32_t>(0x201);   // feature flags: FPU, APIC
        w.put<std::uint64_t>(0);
        ++entries;
    }
    w.put<std::uint8_t>(ENTRY_BUS);
    w.put<std::uint8_t>(0);
    w.put_str("ISA   ", 6);
    ++entries;
    w.put<std::uint8_t>(ENTRY_IOAPIC);
    w.put<std::uint8_t>(ioapic_id);
    w.put<std::uint8_t>(IOAPIC_VERSION);
    w.put<std::uint8_t>(1); // enabled
    w.put<std::uint32_t>(static_cast<std::uint32_t>(layout::IOAPIC_ADDR));
    ++entries;
    for (std::uint8_t irq = 0; irq <= layout::IRQ_MAX; ++irq) {
        w.put<std::uint8_t>(ENTRY_INTSRC);
        w.put<std::uint8_t>(INT_TYPE_INT);
        w.put<std::uint16_t>(0); // polarity and trigger: conforming to the bus (ISA: edge, high)
        w.put<std::uint8_t>(0);  // source bus
        w.put<std::uint8_t>(irq);
        w.put<std::uint8_t>(ioapic_id);
        w.put<std::uint8_t>(irq);
        ++entries;
    }
    // LINT0 = ExtINT (the 8259 through the LAPIC), LINT1 = NMI, on every local APIC (0xff).
    for (auto [type, pin] : {std::pair<std::uint8_t, std::uint8_t>{INT_TYPE_EXTINT, 0}, {INT_TYPE_NMI, 1}}) {
        w.put<std::uint8_t>(ENTRY_LINTSRC);
        w.put<std::uint8_t>(type);
        w.put<std::uint16_t>(0);
        w.put<std::uint8_t>(0);
        w.put<std::uint8_t>(0);
        w.put<std::uint8_t>(0xff);
        w.put<std::uint8_t>(pin);
        ++entries;
    }
    const auto table_len = static_cast<std::uint16_t>(w.b.size() - hdr);
    std::memcpy(w.b.data() + hdr + 4, &table_len, 2);
    std::memcpy(w.b.data() + hdr + 34, &entries, 2);
    w.b[hdr + 7] = checksum(w.b.data() + hdr, table_len);
    w.b[10] = checksum(w.b.data(), FLOATING_SIZE);
    return w.b;
}

void write_mptable(const GuestMemory& mem, unsigned num_cpus) {
    const auto t = build_mptable(num_cpus, static_cast<std::uint32_t>(layout::MPTABLE));
    if (layout::MPTABLE + t.size() > 0xa0000) throw ConfigError("MP table overflows the EBDA");
    auto dst = mem.slice_or_throw(GuestAddr(layout::MPTABLE), t.size(), "MP table");
    std::memcpy(dst.data(), t.data(), t.size());
}

} // namespace ember

