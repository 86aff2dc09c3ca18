#include "vmm/arch/x86_64/cpu_template.hpp"

#include "vmm/base/error.hpp"

#include <algorithm>
#include <cpuid.h>
#include <cstdio>
#include <cstring>

namespace ember {
namespace {

// One register modifier of a static template: (leaf, subleaf, KVM flags, register, filter, value).
struct Row {
    std::uint32_t leaf, subleaf, flags;
    CpuidRegister reg;
    std::uint32_t filter, value;
};

using R = CpuidRegister;
constexpr std::uint32_t SIG = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;

// The rows common to T2, T2S and T2CL/T2A (Firecracker's t2.rs, t2s.rs, t2cl.rs, t2a.rs):
// leaf 1 reports family 6 model 0x3f stepping 2 (Haswell, as on a t2 instance) and hides
//   ECX: DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR, PDCM, DCA;
//   EDX: PSN, DS, ACPI, SS, TM, IA-64, PBE (MCE and MTRR forced on);
// leaf 7.0 hides EBX: SGX, HLE, RTM, RDT-M, MPX, RDT-A, AVX512*, RDSEED, ADX, PCOMMIT,
//   CLFLUSHOPT, CLWB, PT, SHA (ERMS forced on); ECX: AVX512_VBMI(2), UMIP, PKU, OSPKE, GFNI,
//   VAES, VPCLMULQDQ, AVX512_VNNI/BITALG/VPOPCNTDQ, LA57, RDPID, SGX_LC; EDX: AVX512_4VNNIW,
//   AVX512_4FMAPS, FSRM, AVX512_VP2INTERSECT;
// leaf 0xd hides the MPX, AVX-512 and PKRU state components and XSAVEC/XGETBV1/XSAVES.
constexpr Row T2_FAMILY[] = {
    {0x1, 0, 0, R::Eax, 0x0fff3fff, 0x000306f2},
    {0x1, 0, 0, R::Ecx, 0x0004cdfc, 0},
    {0x1, 0, 0, R::Edx, 0xe8641080, 0x00001080},
    {0x7, 0, SIG, R::Ebx, 0xffefda14, 0x00000200},
    {0x7, 0, SIG, R::Ecx, 0x40415f5e, 0},
    {0x7, 0, SIG, R::Edx, 0x0000011c, 0},
    {0xd, 0, SIG, R::Eax, 0x000002f8, 0},
    {0xd, 1, SIG, R::Eax, 0x0000000e, 0},
};

// C3 (c3.rs): leaf 1 family 6 model 0x3e stepping 4 (Ivy Bridge); hides also FMA, MOVBE, BMI1,
// AVX2, BMI2, INVPCID, LZCNT and keeps ERMS as the host has it.
constexpr Row C3_ROWS[] = {
    {0x1, 0, 0, R::Eax, 0x0fff3fff, 0x000306e4},
    {0x1, 0, 0, R::Ecx, 0x0040dd3c, 0},
    {0x1, 0, 0, R::Edx, 0xa8641080, 0x00001080},
    {0x7, 0, SIG, R::Ebx, 0xffafdd3c, 0},
    {0x7, 0, SIG, R::Ecx, 0x4041481e, 0},
    {0x7, 0, SIG, R::Edx, 0x0000000c, 0},
    {0xd, 0, SIG, R::Eax, 0x000002f8, 0},
    {0xd, 1, SIG, R::Eax, 0x0000000e, 0},
    {0x8000'0001, 0, 0, R::Ecx, 0x00000120, 0}, // LZCNT, PREFETCHW
    {0x8000'0001, 0, 0, R::Edx, 0x04000000, 0}, // 1-GByte pages
};

// T2 and T2S on top of T2_FAMILY: PREFETCHW, MONITORX, 1-GByte pages and WBNOINVD hidden.
constexpr Row T2_EXT[] = {
    {0x8000'0001, 0, 0, R::Ecx, 0x20000100, 0},
    {0x8000'0001, 0, 0, R::Edx, 0x04000000, 0},
    {0x8000'0008, 0, 0, R::Ebx, 0x00000200, 0},
};

// T2CL on top of T2_FAMILY: also SSE4A, MisAlignSse and the AMD-only 0x80000001 EDX bits
// (MmxExt, MMX, FXSR, FFXSR), so that it matches T2A.
constexpr Row T2CL_EXT[] = {
    {0x8000'0001, 0, 0, R::Ecx, 0x200001c0, 0},
    {0x8000'0001, 0, 0, R::Edx, 0x07c00000, 0},
    {0x8000'0008, 0, 0, R::Ebx, 0x00000200, 0},
};

// T2A on top of T2_FAMILY (t2a.rs, the AMD twin of T2CL): 0x80000001 ECX hides SVM, SSE4A,
// MisAlignSse, 3DNowPrefetch, MONITORX; EDX hides MmxExt, FFXSR, Page1GB; 0x80000008 EBX hides
// CLZERO and WBNOINVD and reports RstrFpErrPtrs, IbrsPreferred, IbrsSameMode and
// EferLmsleUnsupported.
constexpr Row T2A_EXT[] = {
    {0x8000'0001, 0, 0, R::Ecx, 0x200001c4, 0},
    {0x8000'0001, 0, 0, R::Edx, 0x06400000, 0},
    {0x8000'0008, 0, 0, R::Ebx, 0x001c0205, 0x001c0004},
};

constexpr std::uint32_t MSR_IA32_ARCH_CAPABILITIES = 0x10a;

void add_rows(CustomCpuTemplate& t, const Row* rows, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        const Row& r = rows[i];
        auto it = std::find_if(t.cpuid_modifiers.begin(), t.cpuid_modifiers.end(),
                               [&](const CpuidLeafModifier& m) { return m.leaf == r.leaf && m.subleaf == r.subleaf; });
        if (it == t.cpuid_modifiers.end()) {
            t.cpuid_modifiers.push_back({r.leaf, r.subleaf, r.flags, {}});
            it = std::prev(t.cpuid_modifiers.end());
        }
        it->modifiers.push_back({r.reg, {r.filter, r.value}});
    }
}

template <std::size_t N>
void add_rows(CustomCpuTemplate& t, const Row (&rows)[N]) {
    add_rows(t, rows, N);
}

constexpr std::uint32_t fms(std::uint32_t ext_family, std::uint32_t ext_model, std::uint32_t family, std::uint32_t model,
                            std::uint32_t stepping) {
    return ext_family << 20 | ext_model << 16 | family << 8 | model << 4 | stepping;
}
// Firecracker's arch/x86_64/cpu_model.rs.
constexpr std::uint32_t SKYLAKE = fms(0, 5, 6, 5, 4);
constexpr std::uint32_t CASCADE_LAKE = fms(0, 5, 6, 5, 7);
constexpr std::uint32_t ICE_LAKE = fms(0, 6, 6, 0xa, 6);
constexpr std::uint32_t MILAN = fms(0xa, 0, 0xf, 1, 1);

const char* vendor_of(StaticCpuTemplate t) noexcept { return t == StaticCpuTemplate::T2A ? "AuthenticAMD" : "GenuineIntel"; }

std::string hex(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(v));
    return buf;
}

} // namespace

const char* to_string(StaticCpuTemplate t) noexcept {
    switch (t) {
    case StaticCpuTemplate::C3: return "C3";
    case StaticCpuTemplate::T2: return "T2";
    case StaticCpuTemplate::T2S: return "T2S";
    case StaticCpuTemplate::T2CL: return "T2CL";
    case StaticCpuTemplate::T2A: return "T2A";
    }
    return "None";
}

CustomCpuTemplate static_template_modifiers(StaticCpuTemplate t) {
    CustomCpuTemplate out;
    switch (t) {
    case StaticCpuTemplate::C3:
        add_rows(out, C3_ROWS);
        break;
    case StaticCpuTemplate::T2:
        add_rows(out, T2_FAMILY);
        add_rows(out, T2_EXT);
        break;
    case StaticCpuTemplate::T2S:
        add_rows(out, T2_FAMILY);
        add_rows(out, T2_EXT);
        // IA32_ARCH_CAPABILITIES fixed (t2s.rs): RSBA, SKIP_L1DFL_VMENTRY, IF_PSCHANGE_MC_NO,
        // MISC_PACKAGE_CTLS, ENERGY_FILTERING_CTL, RRSBA and GDS_NO set, every other bit clear, so a
        // snapshot moves between Skylake and Cascade Lake hosts without a guest dropping a mitigation.
        out.msr_modifiers.push_back({MSR_IA32_ARCH_CAPABILITIES, {~std::uint64_t{0}, 0x0408'0c4c}});
        break;
    case StaticCpuTemplate::T2CL:
        add_rows(out, T2_FAMILY);
        add_rows(out, T2CL_EXT);
        // IA32_ARCH_CAPABILITIES (t2cl.rs): the *_NO and mitigation bits KVM passes through are kept;
        // MCU_CONTROL, MISC_PACKAGE_CTLS, ENERGY_FILTERING_CTL, DOITM, FB_CLEAR_CTRL, BHI_NO,
        // XAPIC_DISABLE_STATUS, OVERCLOCKING_STATUS, GDS_CTRL and bits 29-63 are cleared (bits up to
        // RFDS_CLEAR, 28, pass).
        out.msr_modifiers.push_back({MSR_IA32_ARCH_CAPABILITIES, {0xffff'ffff'e2f5'1e00, 0}});
        break;
    case StaticCpuTemplate::T2A:
        add_rows(out, T2_FAMILY);
        add_rows(out, T2A_EXT);
        break;
    }
    return out;
}

HostCpu host_cpu() {
    HostCpu h;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d) == 0) return h;
    char v[13] = {};
    std::memcpy(v, &b, 4);
    std::memcpy(v + 4, &d, 4);
    std::memcpy(v + 8, &c, 4);
    h.vendor = v;
    if (__get_cpuid(1, &a, &b, &c, &d) != 0) h.signature = a;
    return h;
}

bool cpu_model_listed(StaticCpuTemplate t, std::uint32_t signature) noexcept {
    const std::uint32_t s = signature & 0x0fff'0fff; // FMS fields only (no processor type)
    switch (t) {
    case StaticCpuTemplate::C3:
    case StaticCpuTemplate::T2: return s == SKYLAKE || s == CASCADE_LAKE || s == ICE_LAKE;
    case StaticCpuTemplate::T2S: return s == SKYLAKE || s == CASCADE_LAKE;
    case StaticCpuTemplate::T2CL: return s == CASCADE_LAKE || s == ICE_LAKE;
    case StaticCpuTemplate::T2A: return s == MILAN;
    }
    return false;
}

CustomCpuTemplate resolve_cpu_template(const CpuTemplateChoice& choice, const HostCpu& host) {
    if (const auto* c = std::get_if<CustomCpuTemplate>(&choice)) return *c;
    const auto* s = std::get_if<StaticCpuTemplate>(&choice);
    if (s == nullptr) return {};
    if (host.vendor != vendor_of(*s))
        throw ConfigError("Failed to get CPU template: CPU vendor mismatched between actual CPU and CPU template.");
    return static_template_modifiers(*s);
}

std::vector<kvm_cpuid_entry2> apply_cpuid_modifiers(std::vector<kvm_cpuid_entry2> cpuid, const CustomCpuTemplate& t) {
    for (const auto& m : t.cpuid_modifiers) {
        auto it = std::find_if(cpuid.begin(), cpuid.end(),
                               [&](const kvm_cpuid_entry2& e) { return e.function == m.leaf && e.index == m.subleaf; });
        if (it == cpuid.end())
            throw ConfigError("Template changes a CPUID entry not supported by KVM: Leaf: " + hex(m.leaf) +
                              ", Subleaf: " + hex(m.subleaf));
        it->flags = m.flags;
        for (const auto& r : m.modifiers) {
            std::uint32_t* reg = r.reg == CpuidRegister::Eax   ? &it->eax
                                 : r.reg == CpuidRegister::Ebx ? &it->ebx
                                 : r.reg == CpuidRegister::Ecx ? &it->ecx
                                                               : &it->edx;
            *reg = r.bitmap.apply(*reg);
        }
    }
    return cpuid;
}

std::vector<kvm_msr_entry> apply_msr_modifiers(std::vector<kvm_msr_entry> current, const std::vector<MsrModifier>& mods) {
    for (const auto& m : mods)
        for (auto& e : current)
            if (e.index == m.addr) e.data = m.bitmap.apply(e.data);
    return current;
}

std::vector<std::uint32_t> added_kvm_caps(const CustomCpuTemplate& t) {
    std::vector<std::uint32_t> out;
    for (const auto& c : t.kvm_capabilities)
        if (c.add) out.push_back(c.cap);
    return out;
}

std::vector<std::uint32_t> removed_kvm_caps(const CustomCpuTemplate& t) {
    std::vector<std::uint32_t> out;
    for (const auto& c : t.kvm_capabilities)
        if (!c.add) out.push_back(c.cap);
    return out;
}

} // namespace ember
