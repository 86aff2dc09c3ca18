#pragma once
// KVM ioctls whose argument ends in a flexible array, with layouts Ember defines itself.
//
// Debian bookworm's uapi headers declare those arrays with __DECLARE_FLEX_ARRAY, which in C++
// expands to an extra empty struct of size 1: sizeof(kvm_cpuid2) becomes 12 instead of 8, so the
// ioctl numbers built from it are wrong (KVM answers EINVAL) and `entries` sits at the wrong
// offset. Every such ioctl Ember issues goes through the definitions below. Affected for later
// work too: kvm_irq_routing, kvm_reg_list, kvm_signal_mask.

#include <cstddef>
#include <cstdint>
#include <linux/kvm.h>
#include <sys/ioctl.h>

namespace ember::kvm_abi {

struct CpuidHeader { // struct kvm_cpuid2 without its entries: then kvm_cpuid_entry2[nent]
    std::uint32_t nent;
    std::uint32_t padding;
};
struct MsrsHeader { // struct kvm_msrs: then kvm_msr_entry[nmsrs]
    std::uint32_t nmsrs;
    std::uint32_t pad;
};
struct MsrListHeader { // struct kvm_msr_list: then __u32 indices[nmsrs]
    std::uint32_t nmsrs;
};
// struct kvm_xsave without `extra`: the 4096 bytes KVM_GET_XSAVE and KVM_SET_XSAVE copy (api.rst,
// KVM_GET_XSAVE). KVM_GET_XSAVE fails with EINVAL once the process has been granted dynamically
// sized XSAVE features (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM, then KVM_GET_XSAVE2 is needed);
// Ember never asks for them.
struct XsaveRegion {
    std::uint32_t region[1024];
};
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8 && sizeof(MsrListHeader) == 4);
static_assert(sizeof(XsaveRegion) == 4096);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);

// Fixed-size arguments of the state ioctls (no flexible array; their uapi sizes are checked here
// because the ioctl numbers in <linux/kvm.h> are built from them).
static_assert(sizeof(kvm_regs) == 144 && sizeof(kvm_sregs) == 312 && sizeof(kvm_fpu) == 416);
static_assert(sizeof(kvm_lapic_state) == 1024 && sizeof(kvm_xcrs) == 392 && sizeof(kvm_mp_state) == 4);
static_assert(sizeof(kvm_vcpu_events) == 64 && sizeof(kvm_debugregs) == 128);
static_assert(sizeof(kvm_irqchip) == 520 && sizeof(kvm_pit_state2) == 112 && sizeof(kvm_clock_data) == 48);

inline constexpr unsigned long GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long SET_CPUID2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long GET_MSRS = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long SET_MSRS = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long GET_CPUID2 = _IOWR(KVMIO, 0x91, CpuidHeader);
inline constexpr unsigned long GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long GET_XSAVE = _IOR(KVMIO, 0xa4, XsaveRegion);
inline constexpr unsigned long SET_XSAVE = _IOW(KVMIO, 0xa5, XsaveRegion);

// KVM_GET_MSRS and KVM_SET_MSRS refuse (E2BIG) nmsrs >= MAX_IO_MSRS, 256 (arch/x86/kvm/x86.c).
inline constexpr std::size_t MAX_MSRS_PER_CALL = 255;

} // namespace ember::kvm_abi
