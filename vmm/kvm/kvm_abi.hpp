#pragma once
// KVM ioctls whose argument ends in a flexible array, with layouts Ember defines itself.
//
// Debian bookworm's uapi headers declare those arrays with __DECLARE_FLEX_ARRAY, which in C++
// expands to an extra empty struct of size 1: sizeof(kvm_cpuid2) becomes 12 instead of 8, so the
// ioctl numbers built from it are wrong (KVM answers EINVAL) and `entries` sits at the wrong
// offset. Every such ioctl Ember issues goes through the definitions below. Affected for later
// work too: kvm_irq_routing, kvm_xsave (KVM_GET_XSAVE), kvm_reg_list, kvm_signal_mask.

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
static_assert(sizeof(CpuidHeader) == 8 && sizeof(MsrsHeader) == 8);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16);

inline constexpr unsigned long GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, CpuidHeader);
inline constexpr unsigned long SET_CPUID2 = _IOW(KVMIO, 0x90, CpuidHeader);
inline constexpr unsigned long GET_MSRS = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long SET_MSRS = _IOW(KVMIO, 0x89, MsrsHeader);

} // namespace ember::kvm_abi
