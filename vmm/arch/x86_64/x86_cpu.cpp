#include "vmm/arch/x86_64/x86_cpu.hpp"

#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/arch/x86_64/x86_boot.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

namespace ember {
namespace {

constexpr std::uint32_t MSR_IA32_TSC = 0x10;
constexpr std::uint32_t MSR_IA32_SYSENTER_CS = 0x174;
constexpr std::uint32_t MSR_IA32_SYSENTER_ESP = 0x175;
constexpr std::uint32_t MSR_IA32_SYSENTER_EIP = 0x176;
constexpr std::uint32_t MSR_IA32_MISC_ENABLE = 0x1a0;
constexpr std::uint32_t MSR_MTRR_DEF_TYPE = 0x2ff;
constexpr std::uint32_t MSR_STAR = 0xc000'0081;
constexpr std::uint32_t MSR_LSTAR = 0xc000'0082;
constexpr std::uint32_t MSR_CSTAR = 0xc000'0083;
constexpr std::uint32_t MSR_SYSCALL_MASK = 0xc000'0084;
constexpr std::uint32_t MSR_KERNEL_GS_BASE = 0xc000'0102;

constexpr std::uint64_t CR0_PE = 1ull << 0;
constexpr std::uint64_t CR0_ET = 1ull << 4;
constexpr std::uint64_t CR0_PG = 1ull << 31;
constexpr std::uint64_t CR4_PAE = 1ull << 5;
constexpr std::uint64_t EFER_LME = 1ull << 8;
constexpr std::uint64_t EFER_LMA = 1ull << 10;

constexpr unsigned APIC_LVT_LINT0 = 0x350;
constexpr unsigned APIC_LVT_LINT1 = 0x360;
constexpr std::uint32_t APIC_MODE_NMI = 0x4;
constexpr std::uint32_t APIC_MODE_EXTINT = 0x7;

// Bits needed to number `n` items (0 for n <= 1).
std::uint32_t id_bits(unsigned n) { return n <= 1 ? 0u : static_cast<std::uint32_t>(std::bit_width(n - 1u)); }

std::uint32_t lapic_reg(const kvm_lapic_state& l, unsigned off) {
    std::uint32_t v;
    std::memcpy(&v, l.regs + off, 4);
    return v;
}
void set_lapic_reg(kvm_lapic_state& l, unsigned off, std::uint32_t v) { std::memcpy(l.regs + off, &v, 4); }

} // namespace

std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::vector<kvm_cpuid_entry2> e, const CpuTopology& topo, unsigned index) {
    const unsigned threads = topo.threads_per_core();
    const unsigned cores = topo.vcpus / threads;
    const std::uint32_t apic = index;
    const std::uint32_t smt_bits = id_bits(threads);
    const std::uint32_t pkg_bits = id_bits(topo.vcpus);
    bool have_kvm_leaf = false;
    for (auto& x : e) {
        switch (x.function) {
        case 0x1:
            x.ebx = (x.ebx & 0x0000'ffff) | (std::min(topo.vcpus, 255u) << 16) | (apic << 24);
            x.ecx |= CPUID_1_ECX_HYPERVISOR | CPUID_1_ECX_TSC_DEADLINE;
            if (topo.vcpus > 1) x.edx |= CPUID_1_EDX_HTT;
            else x.edx &= ~CPUID_1_EDX_HTT;
            break;
        case 0x4: {
            if ((x.eax & 0x1f) == 0) break; // no cache at this subleaf
            const std::uint32_t level = (x.eax >> 5) & 0x7;
            const std::uint32_t sharing = level <= 2 ? threads - 1 : topo.vcpus - 1;
            x.eax = (x.eax & 0x3ff) | (sharing << 14) | ((cores - 1) << 26);
            break;
        }
        case 0xb:
        case 0x1f:
            // Extended topology: subleaf 0 = SMT level, 1 = core level, then invalid (SDM vol. 2A).
            x.edx = apic;
            if (x.index == 0) {
                x.eax = smt_bits;
                x.ebx = threads;
                x.ecx = (1u << 8) | 0;
            } else if (x.index == 1) {
                x.eax = pkg_bits;
                x.ebx = topo.vcpus;
                x.ecx = (2u << 8) | 1;
            } else {
                x.eax = 0;
                x.ebx = 0;
                x.ecx = x.index;
            }
            break;
        case 0x8000'0008:
            x.ecx = (x.ecx & ~0xf0ffu) | (topo.vcpus - 1) | (pkg_bits << 12);
            break;
        case 0x8000'001e:
            x.eax = apic;
            x.ebx = ((threads - 1) << 8) | (apic / threads);
            x.ecx = 0;
            break;
        case KVM_CPUID_SIGNATURE_LEAF:
            have_kvm_leaf = true;
            break;
        default:
            break;
        }
    }
    if (!have_kvm_leaf) {
        kvm_cpuid_entry2 sig{};
        sig.function = KVM_CPUID_SIGNATURE_LEAF;
        sig.eax = KVM_CPUID_SIGNATURE_LEAF + 1;
        std::memcpy(&sig.ebx, "KVMK", 4);
        std::memcpy(&sig.ecx, "VMKV", 4);
        std::memcpy(&sig.edx, "M\0\0\0", 4);
        e.push_back(sig);
    }
    return e;
}

std::vector<kvm_msr_entry> boot_msrs() {
    auto m = [](std::uint32_t idx, std::uint64_t v) {
        kvm_msr_entry e{};
        e.index = idx;
        e.data = v;
        return e;
    };
    return {
        m(MSR_IA32_SYSENTER_CS, 0), m(MSR_IA32_SYSENTER_ESP, 0), m(MSR_IA32_SYSENTER_EIP, 0),
        m(MSR_STAR, 0), m(MSR_CSTAR, 0), m(MSR_KERNEL_GS_BASE, 0), m(MSR_SYSCALL_MASK, 0), m(MSR_LSTAR, 0),
        m(MSR_IA32_TSC, 0),
        m(MSR_IA32_MISC_ENABLE, 1),                // fast string operations
        m(MSR_MTRR_DEF_TYPE, (1u << 11) | 6),      // MTRRs enabled, default type write-back
    };
}

kvm_fpu boot_fpu() {
    kvm_fpu f{};
    f.fcw = 0x37f;    // x87 default control word
    f.mxcsr = 0x1f80; // SSE default: all exceptions masked
    return f;
}

void configure_lapic_lints(kvm_lapic_state& l) {
    const std::uint32_t lint0 = lapic_reg(l, APIC_LVT_LINT0);
    set_lapic_reg(l, APIC_LVT_LINT0, (lint0 & ~0x700u) | (APIC_MODE_EXTINT << 8));
    const std::uint32_t lint1 = lapic_reg(l, APIC_LVT_LINT1);
    set_lapic_reg(l, APIC_LVT_LINT1, (lint1 & ~0x700u) | (APIC_MODE_NMI << 8));
}

kvm_regs boot_regs(const KernelImage& k) {
    kvm_regs r{};
    r.rflags = 0x2; // bit 1 is reserved and always set
    r.rip = k.entry.raw();
    if (k.protocol == BootProtocol::Pvh) {
        r.rbx = layout::PVH_INFO; // PVH ABI: %ebx = hvm_start_info
    } else {
        r.rsp = layout::BOOT_STACK;
        r.rbp = layout::BOOT_STACK;
        r.rsi = layout::ZERO_PAGE; // boot.rst 64-bit protocol: %rsi = boot_params
    }
    return r;
}

kvm_segment segment_from_gdt(std::uint64_t d, std::uint16_t index) {
    kvm_segment s{};
    s.base = ((d >> 16) & 0xff'ffff) | (((d >> 56) & 0xff) << 24);
    std::uint32_t limit = static_cast<std::uint32_t>((d & 0xffff) | (((d >> 48) & 0xf) << 16));
    s.g = static_cast<std::uint8_t>((d >> 55) & 1);
    s.limit = s.g ? (limit << 12) | 0xfff : limit;
    s.selector = static_cast<std::uint16_t>(index * 8);
    s.type = static_cast<std::uint8_t>((d >> 40) & 0xf);
    s.s = static_cast<std::uint8_t>((d >> 44) & 1);
    s.dpl = static_cast<std::uint8_t>((d >> 45) & 3);
    s.present = static_cast<std::uint8_t>((d >> 47) & 1);
    s.avl = static_cast<std::uint8_t>((d >> 52) & 1);
    s.l = static_cast<std::uint8_t>((d >> 53) & 1);
    s.db = static_cast<std::uint8_t>((d >> 54) & 1);
    s.unusable = s.present ? 0 : 1;
    return s;
}

void boot_sregs(const KernelImage& k, kvm_sregs& s) {
    const auto gdt = boot_gdt(k.protocol);
    s.gdt.base = layout::BOOT_GDT;
    s.gdt.limit = static_cast<std::uint16_t>(gdt.size() * 8 - 1);
    s.idt.base = layout::BOOT_IDT;
    s.idt.limit = 7;
    s.cs = segment_from_gdt(gdt[1], 1);
    const kvm_segment data = segment_from_gdt(gdt[2], 2);
    s.ds = s.es = s.fs = s.gs = s.ss = data;
    s.tr = segment_from_gdt(gdt[3], 3);
    if (k.protocol == BootProtocol::Pvh) {
        s.cr0 = CR0_PE | CR0_ET;
        s.cr4 = 0;
        s.efer = 0;
    } else {
        s.cr0 |= CR0_PE | CR0_PG | CR0_ET;
        s.cr3 = layout::PML4;
        s.cr4 |= CR4_PAE;
        s.efer |= EFER_LME | EFER_LMA;
    }
}

} // namespace ember
