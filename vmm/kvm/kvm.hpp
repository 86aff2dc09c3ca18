#pragma once
// RAII wrappers for /dev/kvm, a VM fd and vCPU fds with their mmap'd kvm_run
// (Documentation/virt/kvm/api.rst). Set-up calls throw SystemError with the ioctl's name.

#include "vmm/base/unique_fd.hpp"
#include "vmm/kvm/kvm_abi.hpp"

#include <cstdint>
#include <linux/kvm.h>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace ember {

class GuestMemory;

// What KVM holds for one vCPU and a snapshot must carry to resume it in another process
// (api.rst: each field is named after its ioctl). The vCPU's memory, devices and VM-wide
// state (VmState) are carried separately.
struct VcpuState {
    std::uint32_t tsc_khz = 0;              // KVM_GET_TSC_KHZ; 0 keeps the destination's rate
    std::vector<kvm_cpuid_entry2> cpuid;    // KVM_GET_CPUID2
    kvm_mp_state mp_state{};
    kvm_regs regs{};
    kvm_sregs sregs{};
    // The x87/SSE state twice: xsave's legacy area holds what fpu does. restore_state() writes
    // fpu first, so where they differ xsave wins.
    kvm_fpu fpu{};
    kvm_xcrs xcrs{};
    kvm_abi::XsaveRegion xsave{};
    kvm_debugregs debugregs{};
    kvm_lapic_state lapic{};
    // Every MSR of Kvm::msr_index_list() but Hyper-V's that this vCPU lets the host read, in that
    // order except that IA32_TSC_DEADLINE comes after IA32_TSC (a deadline is armed against the
    // TSC it is set on).
    std::vector<kvm_msr_entry> msrs;
    kvm_vcpu_events events{};
};

// VM-wide state of the in-kernel devices and the KVM clock (api.rst KVM_GET_IRQCHIP,
// KVM_GET_PIT2, KVM_GET_CLOCK).
struct VmState {
    kvm_irqchip pic_master{}; // chip_id KVM_IRQCHIP_PIC_MASTER
    kvm_irqchip pic_slave{};  // chip_id KVM_IRQCHIP_PIC_SLAVE
    kvm_irqchip ioapic{};     // chip_id KVM_IRQCHIP_IOAPIC
    kvm_pit_state2 pit{};
    kvm_clock_data clock{};
};
static_assert(std::is_trivially_copyable_v<VmState>);

class Kvm {
public:
    // Opens /dev/kvm, checks API version 12 and every capability Ember relies on. Throws
    // ConfigError with one line naming scripts/nested-kvm when /dev/kvm is absent or unusable.
    static Kvm open(const std::string& path = "/dev/kvm");
    // As open(), with a CPU template's kvm_capabilities (Firecracker's KvmCapability): `add` are
    // checked as well, `remove` are left unchecked. A missing one fails with Firecracker's
    // "Missing KVM capabilities".
    static Kvm open(const std::string& path, const std::vector<std::uint32_t>& add, const std::vector<std::uint32_t>& remove);

    int fd() const noexcept { return fd_.get(); }
    int check_extension(long cap) const noexcept;
    // KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK): the KVM_SET_CLOCK flags this kernel takes
    // (x86.c: KVM_CLOCK_VALID_FLAGS since 5.16, KVM_CLOCK_TSC_STABLE before); 0 when it has none.
    std::uint32_t adjust_clock_flags() const noexcept;
    std::size_t vcpu_mmap_size() const noexcept { return mmap_size_; }
    // KVM_GET_SUPPORTED_CPUID, grown until the kernel's table fits.
    std::vector<kvm_cpuid_entry2> supported_cpuid() const;
    // KVM_GET_MSR_INDEX_LIST, read by open(): the MSRs a vCPU's saved state must hold.
    const std::vector<std::uint32_t>& msr_index_list() const noexcept { return msr_index_list_; }

    // Capabilities checked by open(): name and number, exposed for the error message test.
    struct Cap { long id; const char* name; };
    static const std::vector<Cap>& required_caps();

private:
    explicit Kvm(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
    std::size_t mmap_size_ = 0;
    std::vector<std::uint32_t> msr_index_list_;
};

class VmFd {
public:
    explicit VmFd(const Kvm& kvm);
    int fd() const noexcept { return fd_.get(); }

    // x86 platform: the identity-map page and the TSS (three pages) at the given guest addresses,
    // which must be clear of RAM and devices; in-kernel IOAPIC/PIC/LAPIC and PIT.
    void setup_x86_platform(std::uint64_t identity_map_addr, std::uint64_t tss_addr);
    // One slot per region, slot i = region i. `log_dirty`: KVM_MEM_LOG_DIRTY_PAGES, so
    // get_dirty_log() reports the pages vCPUs write (KVM then maps guest RAM in 4 KiB pages only,
    // a cost Firecracker's docs warn of: track_dirty_pages is off by default).
    void register_memory(const GuestMemory& mem, bool log_dirty = false);
    // KVM_GET_DIRTY_LOG of `slot` (registered with log_dirty), `pages` long: bit i of word i / 64
    // is page i, written by a vCPU since the previous call. Without
    // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled (Ember never enables it) the call also clears
    // the log and write-protects the pages again (api.rst 4.8).
    std::vector<std::uint64_t> get_dirty_log(std::uint32_t slot, std::uint64_t pages) const;
    // Edge-triggered interrupt on `gsi` whenever `efd` is signalled (KVM_IRQFD).
    void register_irqfd(int efd, std::uint32_t gsi);
    // Guest writes of `len` bytes to `addr` (PIO when `pio`) signal `efd` without a VM exit;
    // with `datamatch`, only writes of that value do (KVM_IOEVENTFD).
    void register_ioeventfd(int efd, std::uint64_t addr, std::uint32_t len, bool pio,
                            std::optional<std::uint64_t> datamatch);
    void set_irq_line(std::uint32_t irq, bool level) noexcept;

    // chip_id: KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE or KVM_IRQCHIP_IOAPIC.
    kvm_irqchip get_irqchip(std::uint32_t chip_id) const;
    void set_irqchip(const kvm_irqchip& chip);
    kvm_pit_state2 get_pit() const;
    void set_pit(const kvm_pit_state2& pit);
    kvm_clock_data get_clock() const;
    // KVM_SET_CLOCK takes `clock` and, with KVM_CLOCK_REALTIME in flags, advances it by the host
    // time elapsed since `realtime` (kernels before 5.16 refuse any flag).
    void set_clock(const kvm_clock_data& clock);

    // Needs the setup_x86_platform() devices. Save with every vCPU out of KVM_RUN.
    VmState save_state() const;
    // Into a VM set up by setup_x86_platform(), before its vCPUs run. Without `clock_realtime`
    // the clock is set to the saved value with no flags: it resumes where it stopped, not
    // advanced by the time between. With it, KVM_CLOCK_REALTIME goes along with the saved
    // `realtime` and KVM advances the clock by the host wall time since the save, never back
    // (Firecracker's KvmVm::restore_state); throws ConfigError with Firecracker's message when
    // the saved reading has no realtime (KVM_GET_CLOCK gives one only in master-clock mode).
    void restore_state(const VmState& state, bool clock_realtime = false);

private:
    UniqueFd fd_;
};

class VcpuFd {
public:
    // Copies kvm.msr_index_list() for save_state().
    VcpuFd(const Kvm& kvm, const VmFd& vm, unsigned index);
    int fd() const noexcept { return fd_.get(); }
    unsigned index() const noexcept { return index_; }
    kvm_run* run() const noexcept { return static_cast<kvm_run*>(run_.get()); }
    std::size_t run_size() const noexcept { return run_.size(); }

    std::vector<kvm_cpuid_entry2> get_cpuid() const;
    void set_cpuid(const std::vector<kvm_cpuid_entry2>& entries);
    // The values of `indices`, in order; throws ConfigError naming an MSR KVM refuses.
    std::vector<kvm_msr_entry> get_msrs(const std::vector<std::uint32_t>& indices) const;
    // Applied in order; throws ConfigError naming an MSR KVM refuses.
    void set_msrs(const std::vector<kvm_msr_entry>& msrs);
    kvm_regs get_regs() const;
    void set_regs(const kvm_regs& r);
    kvm_sregs get_sregs() const;
    void set_sregs(const kvm_sregs& s);
    kvm_fpu get_fpu() const;
    void set_fpu(const kvm_fpu& f);
    kvm_abi::XsaveRegion get_xsave() const;
    void set_xsave(const kvm_abi::XsaveRegion& x);
    kvm_xcrs get_xcrs() const;
    void set_xcrs(const kvm_xcrs& x);
    kvm_lapic_state get_lapic() const;
    void set_lapic(const kvm_lapic_state& l);
    kvm_mp_state get_mp_state() const;
    void set_mp_state(const kvm_mp_state& m);
    kvm_vcpu_events get_vcpu_events() const;
    void set_vcpu_events(const kvm_vcpu_events& e);
    kvm_debugregs get_debugregs() const;
    void set_debugregs(const kvm_debugregs& d);
    std::uint32_t get_tsc_khz() const;
    void set_tsc_khz(std::uint32_t khz);

    // KVM_RUN with immediate_exit set: KVM completes the PIO or MMIO of the last exit (for an IN,
    // with the data now in kvm_run) and returns EINTR without running guest code. Until then the
    // registers are not those after the instruction, and that pending completion is not part of
    // any state KVM reports (api.rst, "The kvm_run structure": immediate_exit and the note on
    // KVM_EXIT_IO). Call it before save_state() when the last KVM_RUN returned an exit. False
    // when completing produced another exit (a string PIO or MMIO that goes on): handle it as
    // any exit, then call again.
    [[nodiscard]] bool complete_pending_exit();

    // Precondition: the vCPU is out of KVM_RUN with no pending exit (complete_pending_exit()).
    VcpuState save_state() const;
    // Into a vCPU that has not run (after KVM_RUN, KVM_SET_CPUID2 refuses a changed table), with
    // the VM's memory and VmState in place. Throws SystemError naming the refused ioctl
    // (ConfigError naming the MSR for a refused MSR).
    void restore_state(const VcpuState& state);

private:
    UniqueFd fd_;
    Mapping run_;
    unsigned index_;
    std::vector<std::uint32_t> msr_indices_;
};

} // namespace ember
