// libFuzzer target: the CPU template parser (PUT /cpu-config bodies and cpu-config files).
// Invariants checked: no crash, no sanitizer report, a refusal is a ConfigError only, every
// accepted template keeps value within filter (BitFilter's invariant), and it survives a round
// trip through to_json() unchanged (what GET /vm/config shows is what was configured).

#include "api/cpu_config.hpp"
#include "vmm/base/error.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    ember::CustomCpuTemplate t;
    try {
        t = ember::parse_cpu_config_text(text);
    } catch (const ember::ConfigError&) {
        return 0;
    }
    for (const auto& m : t.cpuid_modifiers)
        for (const auto& r : m.modifiers)
            if ((r.bitmap.value & ~r.bitmap.filter) != 0) std::abort();
    for (const auto& m : t.msr_modifiers)
        if ((m.bitmap.value & ~m.bitmap.filter) != 0) std::abort();
    const std::string shown = ember::to_json(t).dump();
    if (!(ember::parse_cpu_config_text(shown) == t)) std::abort();
    return 0;
}
