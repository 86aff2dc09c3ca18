#pragma once
// RAII wrappers for /dev/kvm, a VM fd and vCPU fds with their mmap'd kvm_run
// (Documentation/virt/kvm/api.rst). Set-up calls throw SystemError with the ioctl's name.

#include "vmm/base/unique_fd.hpp"

#include <cstdint>
#include <linux/kvm.h>
#include <optional>
#include <string>
#include <vector>

namespace ember {

class GuestMemory;

class Kvm {
public:
    // Opens /dev/kvm, checks API version 12 and every capability Ember relies on. Throws
    // ConfigError with one line naming scripts/nested-kvm when /dev/kvm is absent or unusable.
    static Kvm open(const std::string& path = "/dev/kvm");

    int fd() const noexcept { return fd_.get(); }
    int check_extension(long cap) const noexcept;
    std::size_t vcpu_mmap_size() const noexcept { return mmap_size_; }
    // KVM_GET_SUPPORTED_CPUID, grown until the kernel's table fits.
    std::vector<kvm_cpuid_entry2> supported_cpuid() const;

    // Capabilities checked by open(): name and number, exposed for the error message test.
    struct Cap { long id; const char* name; };
    static const std::vector<Cap>& required_caps();

private:
    explicit Kvm(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
    std::size_t mmap_size_ = 0;
};

class VmFd {
public:
    explicit VmFd(const Kvm& kvm);
    int fd() const noexcept { return fd_.get(); }

    // x86 platform: the identity-map page and the TSS (three pages) at the given guest addresses,
    // which must be clear of RAM and devices; in-kernel IOAPIC/PIC/LAPIC and PIT.
    void setup_x86_platform(std::uint64_t identity_map_addr, std::uint64_t tss_addr);
    void register_memory(const GuestMemory& mem);
    // Edge-triggered interrupt on `gsi` whenever `efd` is signalled (KVM_IRQFD).
    void register_irqfd(int efd, std::uint32_t gsi);
    // Guest writes of `len` bytes to `addr` (PIO when `pio`) signal `efd` without a VM exit;
    // with `datamatch`, only writes of that value do (KVM_IOEVENTFD).
    void register_ioeventfd(int efd, std::uint64_t addr, std::uint32_t len, bool pio,
                            std::optional<std::uint64_t> datamatch);
    void set_irq_line(std::uint32_t irq, bool level) noexcept;

private:
    UniqueFd fd_;
};

class VcpuFd {
public:
    VcpuFd(const Kvm& kvm, const VmFd& vm, unsigned index);
    int fd() const noexcept { return fd_.get(); }
    unsigned index() const noexcept { return index_; }
    kvm_run* run() const noexcept { return static_cast<kvm_run*>(run_.get()); }
    std::size_t run_size() const noexcept { return run_.size(); }

    void set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
    void set_msrs(const std::vector<kvm_msr_entry>& msrs);
    kvm_regs get_regs() const;
    void set_regs(const kvm_regs& r);
    kvm_sregs get_sregs() const;
    void set_sregs(const kvm_sregs& s);
    void set_fpu(const kvm_fpu& f);
    kvm_lapic_state get_lapic() const;
    void set_lapic(const kvm_lapic_state& l);

private:
    UniqueFd fd_;
    Mapping run_;
    unsigned index_;
};

} // namespace ember
