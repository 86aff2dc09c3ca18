#include "api/cpu_config.hpp"

#include "vmm/base/error.hpp"

#include <cstdio>
#include <limits>

namespace ember {
namespace {

using nlohmann::json;

std::string kind(const json& v) {
    if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
    if (v.is_number_float()) return "a number with a fraction";
    return std::string("a ") + v.type_name();
}

const json& required(const json& j, const char* name, const std::string& where) {
    auto it = j.find(name);
    if (it == j.end()) throw ConfigError(where + ": missing required field \"" + name + "\"");
    return *it;
}

std::string string_of(const json& v, const std::string& where) {
    if (!v.is_string()) throw ConfigError(where + " must be a string, not " + kind(v));
    return v.get<std::string>();
}

const json& array_of(const json& v, const std::string& where) {
    if (!v.is_array()) throw ConfigError(where + " must be a JSON array, not " + kind(v));
    return v;
}

void object_of(const json& v, const std::string& where) {
    if (!v.is_object()) throw ConfigError(where + " must be a JSON object, not " + kind(v));
}

// Firecracker's modifier structs ignore unknown keys; only CustomCpuTemplate denies them.
CpuidRegister parse_register(const json& v, const std::string& where) {
    const std::string r = string_of(v, where);
    if (r == "eax") return CpuidRegister::Eax;
    if (r == "ebx") return CpuidRegister::Ebx;
    if (r == "ecx") return CpuidRegister::Ecx;
    if (r == "edx") return CpuidRegister::Edx;
    throw ConfigError(where + " \"" + r + "\": Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]");
}

const char* register_name(CpuidRegister r) {
    switch (r) {
    case CpuidRegister::Eax: return "eax";
    case CpuidRegister::Ebx: return "ebx";
    case CpuidRegister::Ecx: return "ecx";
    case CpuidRegister::Edx: return "edx";
    }
    return "eax";
}

std::string hex(std::uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%#x", v);
    return v == 0 ? "0x0" : buf;
}

} // namespace

BitFilter<std::uint64_t> parse_bitmap(std::string_view s, unsigned bits, const std::string& where) {
    const std::string original(s);
    if (s.substr(0, 2) == "0b") s.remove_prefix(2);
    BitFilter<std::uint64_t> f;
    unsigned bit = 0;
    for (auto it = s.rbegin(); it != s.rend(); ++it) {
        const char c = *it;
        if (c == '_') continue;
        if (c != 'x' && c != '0' && c != '1')
            throw ConfigError(where + ": Failed to parse string [" + original + "] as a bitmap - unknown character: " +
                              std::to_string(static_cast<unsigned char>(c)));
        if (bit == bits)
            throw ConfigError(where + ": Failed to parse string [" + original + "] as a bitmap - string is too long (more than " +
                              std::to_string(bits) + " bits)");
        const std::uint64_t mask = std::uint64_t{1} << bit;
        if (c != 'x') f.filter |= mask;
        if (c == '1') f.value |= mask;
        ++bit;
    }
    return f;
}

std::string format_bitmap(const BitFilter<std::uint64_t>& f, unsigned bits) {
    std::string out = "0b";
    for (unsigned i = bits; i-- > 0;) {
        const std::uint64_t mask = std::uint64_t{1} << i;
        out += (f.filter & mask) == 0 ? 'x' : (f.value & mask) != 0 ? '1' : '0';
    }
    return out;
}

std::uint32_t parse_template_u32(std::string_view s, const std::string& where) {
    const std::string original(s);
    unsigned base = 10;
    if (s.substr(0, 2) == "0x" || s.substr(0, 2) == "0X") {
        base = 16;
        s.remove_prefix(2);
    } else if (s.substr(0, 2) == "0b") {
        base = 2;
        s.remove_prefix(2);
    }
    if (s.empty()) throw ConfigError(where + ": Failed to parse string [" + original + "] as a number for CPU template");
    std::uint64_t v = 0;
    for (char c : s) {
        unsigned d;
        if (c >= '0' && c <= '9') d = static_cast<unsigned>(c - '0');
        else if (c >= 'a' && c <= 'f') d = static_cast<unsigned>(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') d = static_cast<unsigned>(c - 'A' + 10);
        else d = 16;
        if (d >= base)
            throw ConfigError(where + ": Failed to parse string [" + original +
                              "] as a number for CPU template (hexadecimal with 0x, binary with 0b, or decimal)");
        v = v * base + d;
        if (v > std::numeric_limits<std::uint32_t>::max())
            throw ConfigError(where + ": " + original + " does not fit in 32 bits");
    }
    return static_cast<std::uint32_t>(v);
}

CustomCpuTemplate parse_cpu_config(const json& j) {
    const std::string w = "cpu-config";
    object_of(j, w);
    for (auto it = j.begin(); it != j.end(); ++it) {
        const std::string& k = it.key();
        if (k == "reg_modifiers" || k == "vcpu_features")
            throw ConfigError(w + ": unknown field \"" + k + "\" (an aarch64 template field; this host is x86_64)");
        if (k != "kvm_capabilities" && k != "cpuid_modifiers" && k != "msr_modifiers")
            throw ConfigError(w + ": unknown field \"" + k + "\", expected kvm_capabilities, cpuid_modifiers or msr_modifiers");
    }
    CustomCpuTemplate t;
    if (auto it = j.find("kvm_capabilities"); it != j.end()) {
        std::size_t i = 0;
        for (const auto& c : array_of(*it, w + ".kvm_capabilities")) {
            const std::string where = w + ".kvm_capabilities[" + std::to_string(i++) + "]";
            std::string s = string_of(c, where);
            KvmCapabilityRule r;
            std::string_view digits = s;
            if (!digits.empty() && digits.front() == '!') {
                r.add = false;
                digits.remove_prefix(1);
            }
            bool ok = !digits.empty() && digits.size() <= 10;
            std::uint64_t v = 0;
            for (char ch : digits) {
                ok = ok && ch >= '0' && ch <= '9';
                if (ok) v = v * 10 + static_cast<std::uint64_t>(ch - '0');
            }
            if (!ok || v > std::numeric_limits<std::uint32_t>::max())
                throw ConfigError(where + ": Failed to parse string [" + s +
                                  "] as a kvm capability - expected a number, or ! and a number");
            r.cap = static_cast<std::uint32_t>(v);
            t.kvm_capabilities.push_back(r);
        }
    }
    if (auto it = j.find("cpuid_modifiers"); it != j.end()) {
        std::size_t i = 0;
        for (const auto& m : array_of(*it, w + ".cpuid_modifiers")) {
            const std::string where = w + ".cpuid_modifiers[" + std::to_string(i++) + "]";
            object_of(m, where);
            CpuidLeafModifier lm;
            lm.leaf = parse_template_u32(string_of(required(m, "leaf", where), where + ".leaf"), where + ".leaf");
            lm.subleaf = parse_template_u32(string_of(required(m, "subleaf", where), where + ".subleaf"), where + ".subleaf");
            const json& flags = required(m, "flags", where);
            if (!flags.is_number_unsigned() && !(flags.is_number_integer() && flags.get<std::int64_t>() >= 0))
                throw ConfigError(where + ".flags must be a non-negative integer, not " + kind(flags));
            if (flags.get<std::uint64_t>() > std::numeric_limits<std::uint32_t>::max())
                throw ConfigError(where + ".flags does not fit in 32 bits");
            lm.flags = static_cast<std::uint32_t>(flags.get<std::uint64_t>());
            std::size_t k = 0;
            for (const auto& r : array_of(required(m, "modifiers", where), where + ".modifiers")) {
                const std::string rw = where + ".modifiers[" + std::to_string(k++) + "]";
                object_of(r, rw);
                CpuidRegisterModifier rm;
                rm.reg = parse_register(required(r, "register", rw), rw + ".register");
                const auto b = parse_bitmap(string_of(required(r, "bitmap", rw), rw + ".bitmap"), 32, rw + ".bitmap");
                rm.bitmap = {static_cast<std::uint32_t>(b.filter), static_cast<std::uint32_t>(b.value)};
                lm.modifiers.push_back(rm);
            }
            t.cpuid_modifiers.push_back(std::move(lm));
        }
    }
    if (auto it = j.find("msr_modifiers"); it != j.end()) {
        std::size_t i = 0;
        for (const auto& m : array_of(*it, w + ".msr_modifiers")) {
            const std::string where = w + ".msr_modifiers[" + std::to_string(i++) + "]";
            object_of(m, where);
            MsrModifier mm;
            mm.addr = parse_template_u32(string_of(required(m, "addr", where), where + ".addr"), where + ".addr");
            mm.bitmap = parse_bitmap(string_of(required(m, "bitmap", where), where + ".bitmap"), 64, where + ".bitmap");
            t.msr_modifiers.push_back(mm);
        }
    }
    return t;
}

CustomCpuTemplate parse_cpu_config_text(const std::string& text) {
    json j;
    try {
        j = json::parse(text);
    } catch (const json::exception& e) {
        throw ConfigError(std::string("the CPU template is not valid JSON: ") + e.what());
    }
    return parse_cpu_config(j);
}

json to_json(const CustomCpuTemplate& t) {
    json caps = json::array();
    for (const auto& c : t.kvm_capabilities) caps.push_back((c.add ? "" : "!") + std::to_string(c.cap));
    json cpuid = json::array();
    for (const auto& m : t.cpuid_modifiers) {
        json regs = json::array();
        for (const auto& r : m.modifiers)
            regs.push_back({{"register", register_name(r.reg)}, {"bitmap", format_bitmap({r.bitmap.filter, r.bitmap.value}, 32)}});
        cpuid.push_back({{"leaf", hex(m.leaf)}, {"subleaf", hex(m.subleaf)}, {"flags", m.flags}, {"modifiers", regs}});
    }
    json msrs = json::array();
    for (const auto& m : t.msr_modifiers) msrs.push_back({{"addr", hex(m.addr)}, {"bitmap", format_bitmap(m.bitmap, 64)}});
    return {{"kvm_capabilities", caps}, {"cpuid_modifiers", cpuid}, {"msr_modifiers", msrs}};
}

std::optional<StaticCpuTemplate> parse_static_cpu_template(const std::string& name, const std::string& where) {
    if (name == "None") return std::nullopt;
    for (auto t : {StaticCpuTemplate::C3, StaticCpuTemplate::T2, StaticCpuTemplate::T2S, StaticCpuTemplate::T2CL,
                   StaticCpuTemplate::T2A})
        if (name == to_string(t)) return t;
    std::string msg = where + ": unknown variant \"" + name + "\", expected one of C3, T2, T2S, None, T2CL, T2A";
    if (name == "V1N1") msg += " (V1N1 is an aarch64 template)";
    throw ConfigError(msg);
}

} // namespace ember
