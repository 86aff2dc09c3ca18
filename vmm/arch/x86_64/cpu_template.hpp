#pragma once
// CPU templates (Firecracker's cpu_config): a list of CPUID and MSR modifiers applied to what KVM
// supports before the vCPUs are configured, so a guest sees a chosen feature set. Firecracker's
// static templates (C3, T2, T2S, T2CL, T2A) are tables of the same modifiers; a custom template
// is parsed from client JSON by api/cpu_config. Pure functions over value types, so unit tests
// need no KVM.

#include <array>
#include <cstdint>
#include <linux/kvm.h>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace ember {

// Firecracker's RegisterValueFilter (cpu_config/templates.rs): the bits set in `filter` are
// replaced by those of `value`; the others are kept. Invariant: value & ~filter == 0.
template <typename T>
struct BitFilter {
    T filter = 0;
    T value = 0;
    constexpr T apply(T reg) const noexcept { return static_cast<T>((reg & static_cast<T>(~filter)) | value); }
    bool operator==(const BitFilter&) const = default;
};

enum class CpuidRegister { Eax, Ebx, Ecx, Edx };

struct CpuidRegisterModifier {
    CpuidRegister reg = CpuidRegister::Eax;
    BitFilter<std::uint32_t> bitmap;
    bool operator==(const CpuidRegisterModifier&) const = default;
};

// One CPUID entry (leaf, subleaf) to change; `flags` replaces the entry's KVM flags
// (KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1), as Firecracker does.
struct CpuidLeafModifier {
    std::uint32_t leaf = 0;
    std::uint32_t subleaf = 0;
    std::uint32_t flags = 0;
    std::vector<CpuidRegisterModifier> modifiers;
    bool operator==(const CpuidLeafModifier&) const = default;
};

struct MsrModifier {
    std::uint32_t addr = 0;
    BitFilter<std::uint64_t> bitmap;
    bool operator==(const MsrModifier&) const = default;
};

// Firecracker's KvmCapability: "N" adds capability N to those checked when KVM is opened,
// "!N" removes N from them.
struct KvmCapabilityRule {
    std::uint32_t cap = 0;
    bool add = true;
    bool operator==(const KvmCapabilityRule&) const = default;
};

// Firecracker's x86_64 CustomCpuTemplate.
struct CustomCpuTemplate {
    std::vector<KvmCapabilityRule> kvm_capabilities;
    std::vector<CpuidLeafModifier> cpuid_modifiers;
    std::vector<MsrModifier> msr_modifiers;
    bool operator==(const CustomCpuTemplate&) const = default;
};

// Firecracker's x86_64 StaticCpuTemplate, without None (no template is the empty choice below).
enum class StaticCpuTemplate { C3, T2, T2S, T2CL, T2A };
const char* to_string(StaticCpuTemplate t) noexcept;

// What the VM's CPU is shaped by: nothing, a static template (machine-config.cpu_template) or a
// custom one (PUT /cpu-config). One slot, as Firecracker's MachineConfig::cpu_template: the last
// of the two requests wins.
using CpuTemplateChoice = std::variant<std::monostate, StaticCpuTemplate, CustomCpuTemplate>;

// The modifiers of a static template (Firecracker's static_cpu_templates/*.rs, same bits).
CustomCpuTemplate static_template_modifiers(StaticCpuTemplate t);

// The host CPU as CPUID reports it: leaf 0 vendor string and leaf 1 EAX (family/model/stepping).
struct HostCpu {
    std::string vendor; // "GenuineIntel", "AuthenticAMD", ...
    std::uint32_t signature = 0;
};
HostCpu host_cpu();

// The template a choice stands for on `host`. Throws ConfigError with Firecracker's message when
// a static template is for the other vendor (GetCpuTemplateError::CpuVendorMismatched). Firecracker
// also refuses a static template on a CPU model outside its list (InvalidCpuModel); Ember's
// builder only warns (cpu_model_listed) and applies it: the nested test CPU, QEMU's "max", is no
// EC2 model.
CustomCpuTemplate resolve_cpu_template(const CpuTemplateChoice& choice, const HostCpu& host);
// Whether Firecracker lists `signature` (CPUID.1:EAX) for `t` (static_cpu_templates/mod.rs
// get_supported_cpu_models, compared on family, model and stepping).
bool cpu_model_listed(StaticCpuTemplate t, std::uint32_t signature) noexcept;

// Applies the CPUID modifiers to KVM's supported table (Firecracker: CpuConfiguration::
// apply_template). Throws ConfigError "Template changes a CPUID entry not supported by KVM" for
// a (leaf, subleaf) the table lacks.
std::vector<kvm_cpuid_entry2> apply_cpuid_modifiers(std::vector<kvm_cpuid_entry2> cpuid, const CustomCpuTemplate& t);

// `current` holds the vCPU's values of the modified MSRs, in msr_modifiers order; returns them
// with the modifiers applied.
std::vector<kvm_msr_entry> apply_msr_modifiers(std::vector<kvm_msr_entry> current, const std::vector<MsrModifier>& mods);

// KVM capabilities the template adds to, and removes from, those checked at open.
std::vector<std::uint32_t> added_kvm_caps(const CustomCpuTemplate& t);
std::vector<std::uint32_t> removed_kvm_caps(const CustomCpuTemplate& t);

} // namespace ember
