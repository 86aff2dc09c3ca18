#pragma once
// Per-vCPU architectural state at boot, as pure functions of the configuration so that they can
// be unit-tested without KVM: CPUID, boot MSRs, FPU, LAPIC LINT pins, registers.

#include "vmm/arch/x86_64/kernel_loader.hpp"

#include <cstdint>
#include <linux/kvm.h>
#include <vector>

namespace ember {

struct CpuTopology {
    unsigned vcpus = 1;
    bool smt = false; // two threads per core; vcpus must then be even (or 1)
    unsigned threads_per_core() const noexcept { return smt && vcpus > 1 ? 2 : 1; }
};

// CPUID bits Ember sets on top of KVM_GET_SUPPORTED_CPUID.
inline constexpr std::uint32_t CPUID_1_ECX_TSC_DEADLINE = 1u << 24;
inline constexpr std::uint32_t CPUID_1_ECX_HYPERVISOR = 1u << 31;
inline constexpr std::uint32_t CPUID_1_EDX_HTT = 1u << 28;
inline constexpr std::uint32_t KVM_CPUID_SIGNATURE_LEAF = 0x4000'0000;

// Adjusts the supported CPUID table for vCPU `index`: its APIC id in leaves 1, 0xB, 0x1F and
// 0x8000001E; the topology (one socket, cores x threads) in leaves 1, 4, 0xB, 0x1F, 0x80000008;
// the hypervisor bit (so Linux reads the KVM leaves and uses kvmclock) and TSC-deadline (which
// KVM emulates without advertising; without it Linux calibrates the LAPIC timer for ~100 ms).
std::vector<kvm_cpuid_entry2> cpuid_for_vcpu(std::vector<kvm_cpuid_entry2> supported, const CpuTopology& topo,
                                             unsigned index);

std::vector<kvm_msr_entry> boot_msrs();
kvm_fpu boot_fpu();
// LINT0 as ExtINT (the PIC's output), LINT1 as NMI: what the MP table announces.
void configure_lapic_lints(kvm_lapic_state& lapic);

// Registers of the boot vCPU at the kernel's entry point.
kvm_regs boot_regs(const KernelImage& k);
// Segment state for the entry mode: 64-bit long mode with identity paging (Linux64), or 32-bit
// flat protected mode without paging (PVH). `sregs` is the vCPU's current state to adjust.
void boot_sregs(const KernelImage& k, kvm_sregs& sregs);

// The kvm_segment a GDT descriptor describes (limit scaled by the granularity bit).
kvm_segment segment_from_gdt(std::uint64_t desc, std::uint16_t index);

} // namespace ember
