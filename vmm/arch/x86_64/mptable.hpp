#pragma once
// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI finds its CPUs, the
// IOAPIC and the ISA interrupt routing. Written at layout::MPTABLE (inside the EBDA, which
// Linux's smp_scan_config searches).

#include <cstdint>
#include <vector>

namespace ember {

class GuestMemory;

// The table must fit in the EBDA's 1 KiB (284 + 20 bytes per CPU), which also keeps the IOAPIC's
// id (num_cpus + 1) clear of the broadcast id 0xff.
inline constexpr unsigned MPTABLE_MAX_CPUS = 37;

// The floating pointer followed by the configuration table, as they are placed at `base`.
// Both structures' bytes sum to 0 mod 256 (MP spec §4.1, §4.2).
std::vector<std::uint8_t> build_mptable(unsigned num_cpus, std::uint32_t base);

void write_mptable(const GuestMemory& mem, unsigned num_cpus);

} // namespace ember
