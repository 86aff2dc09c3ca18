#include "vmm/kvm/kvm.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/kvm/kvm_abi.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <algorithm>
#include <sys/ioctl.h>
#include <sys/mman.h>

namespace ember {
namespace {

// ioctl(2) wrapper: KVM request numbers are unsigned long, arguments a pointer or an integer.
template <class Arg>
int xioctl(int fd, unsigned long req, Arg arg) noexcept {
    int r;
    do {
        r = ::ioctl(fd, req, arg);
    } while (r < 0 && errno == EINTR);
    return r;
}

template <class Arg>
int must_ioctl(int fd, unsigned long req, Arg arg, const char* name) {
    int r = xioctl(fd, req, arg);
    if (r < 0) throw_errno(name);
    return r;
}

} // namespace

const std::vector<Kvm::Cap>& Kvm::required_caps() {
    static const std::vector<Cap> caps = {
        {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
        {KVM_CAP_HLT, "KVM_CAP_HLT"},
        {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
        {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
        {KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR"},
        {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
        {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
        {KVM_CAP_PIT_STATE2, "KVM_CAP_PIT_STATE2"},
        {KVM_CAP_IRQFD, "KVM_CAP_IRQFD"},
        {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD"},
        {KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
        {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
        {KVM_CAP_TSC_DEADLINE_TIMER, "KVM_CAP_TSC_DEADLINE_TIMER"},
        {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
        {KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS"},
        {KVM_CAP_XSAVE, "KVM_CAP_XSAVE"},
        {KVM_CAP_XCRS, "KVM_CAP_XCRS"},
        {KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK"},
        {KVM_CAP_SYNC_MMU, "KVM_CAP_SYNC_MMU"},
    };
    return caps;
}

Kvm Kvm::open(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        int err = errno;
        throw ConfigError("cannot open " + path + ": " + std::strerror(err) +
                          " (Ember needs KVM; on a machine without it, run through scripts/nested-kvm)");
    }
    Kvm kvm{UniqueFd(fd)};
    int version = xioctl(fd, KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION)
        throw ConfigError("KVM API version " + std::to_string(version) + " is not the expected " +
                          std::to_string(KVM_API_VERSION));
    for (const auto& cap : required_caps())
        if (kvm.check_extension(cap.id) <= 0)
            throw ConfigError(std::string("KVM lacks a required capability: ") + cap.name);
    // A /dev/kvm node can exist on a host without VT-x/AMD-V (seen on our CI machines): the
    // API answers, but CPUID and VM entry do not work. Probe it, so the error says so.
    try {
        (void)kvm.supported_cpuid();
    } catch (const SystemError& e) {
        throw ConfigError(path + " is present but KVM is not usable (" + e.what() +
                          "; no hardware virtualization?). Run through scripts/nested-kvm");
    }
    int sz = xioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (sz <= 0) throw_errno("KVM_GET_VCPU_MMAP_SIZE");
    kvm.mmap_size_ = static_cast<std::size_t>(sz);
    return kvm;
}

int Kvm::check_extension(long cap) const noexcept { return xioctl(fd_.get(), KVM_CHECK_EXTENSION, cap); }

std::vector<kvm_cpuid_entry2> Kvm::supported_cpuid() const {
    for (std::uint32_t n = 128; n <= 4096; n *= 2) {
        std::vector<std::byte> buf(sizeof(kvm_abi::CpuidHeader) + n * sizeof(kvm_cpuid_entry2));
        kvm_abi::CpuidHeader hdr{n, 0};
        std::memcpy(buf.data(), &hdr, sizeof hdr);
        if (xioctl(fd_.get(), kvm_abi::GET_SUPPORTED_CPUID, buf.data()) == 0) {
            std::memcpy(&hdr, buf.data(), sizeof hdr);
            std::vector<kvm_cpuid_entry2> out(std::min(hdr.nent, n));
            std::memcpy(out.data(), buf.data() + sizeof hdr, out.size() * sizeof(kvm_cpuid_entry2));
            return out;
        }
        if (errno != E2BIG) throw_errno("KVM_GET_SUPPORTED_CPUID");
    }
    throw SystemError("KVM_GET_SUPPORTED_CPUID", E2BIG);
}

VmFd::VmFd(const Kvm& kvm) {
    int fd = xioctl(kvm.fd(), KVM_CREATE_VM, 0);
    if (fd < 0) throw_errno("KVM_CREATE_VM");
    fd_.reset(fd);
}

void VmFd::setup_x86_platform(std::uint64_t identity_map_addr, std::uint64_t tss_addr) {
    // The TSS (3 pages) and identity-map page must be in the MMIO gap, clear of RAM and devices.
    std::uint64_t ident = identity_map_addr;
    must_ioctl(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &ident, "KVM_SET_IDENTITY_MAP_ADDR");
    must_ioctl(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(tss_addr), "KVM_SET_TSS_ADDR");
    must_ioctl(fd_.get(), KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    must_ioctl(fd_.get(), KVM_CREATE_PIT2, &pit, "KVM_CREATE_PIT2");
}

void VmFd::register_memory(const GuestMemory& mem) {
    std::uint32_t slot = 0;
    for (const auto& r : mem.regions()) {
        kvm_userspace_memory_region region{};
        region.slot = slot++;
        region.guest_phys_addr = r.range.start().raw();
        region.memory_size = r.range.size();
        region.userspace_addr = reinterpret_cast<std::uint64_t>(r.host);
        must_ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
    }
}

void VmFd::register_irqfd(int efd, std::uint32_t gsi) {
    kvm_irqfd irqfd{};
    irqfd.fd = static_cast<std::uint32_t>(efd);
    irqfd.gsi = gsi;
    must_ioctl(fd_.get(), KVM_IRQFD, &irqfd, "KVM_IRQFD");
}

void VmFd::register_ioeventfd(int efd, std::uint64_t addr, std::uint32_t len, bool pio,
                              std::optional<std::uint64_t> datamatch) {
    kvm_ioeventfd io{};
    io.addr = addr;
    io.len = len;
    io.fd = efd;
    if (pio) io.flags |= KVM_IOEVENTFD_FLAG_PIO;
    if (datamatch) {
        io.flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
        io.datamatch = *datamatch;
    }
    must_ioctl(fd_.get(), KVM_IOEVENTFD, &io, "KVM_IOEVENTFD");
}

void VmFd::set_irq_line(std::uint32_t irq, bool level) noexcept {
    kvm_irq_level l{};
    l.irq = irq;
    l.level = level ? 1 : 0;
    (void)xioctl(fd_.get(), KVM_IRQ_LINE, &l);
}

VcpuFd::VcpuFd(const Kvm& kvm, const VmFd& vm, unsigned index) : index_(index) {
    int fd = xioctl(vm.fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index));
    if (fd < 0) throw_errno("KVM_CREATE_VCPU " + std::to_string(index));
    fd_.reset(fd);
    run_ = Mapping::map(kvm.vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, "kvm_run");
}

void VcpuFd::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
    std::vector<std::byte> buf(sizeof(kvm_abi::CpuidHeader) + entries.size() * sizeof(kvm_cpuid_entry2));
    const kvm_abi::CpuidHeader hdr{static_cast<std::uint32_t>(entries.size()), 0};
    std::memcpy(buf.data(), &hdr, sizeof hdr);
    std::memcpy(buf.data() + sizeof hdr, entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
    must_ioctl(fd_.get(), kvm_abi::SET_CPUID2, buf.data(), "KVM_SET_CPUID2");
}

void VcpuFd::set_msrs(const std::vector<kvm_msr_entry>& msrs) {
    std::vector<std::byte> buf(sizeof(kvm_abi::MsrsHeader) + msrs.size() * sizeof(kvm_msr_entry));
    const kvm_abi::MsrsHeader hdr{static_cast<std::uint32_t>(msrs.size()), 0};
    std::memcpy(buf.data(), &hdr, sizeof hdr);
    std::memcpy(buf.data() + sizeof hdr, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
    const int n = must_ioctl(fd_.get(), kvm_abi::SET_MSRS, buf.data(), "KVM_SET_MSRS");
    if (static_cast<std::size_t>(n) != msrs.size()) {
        char b[64];
        std::snprintf(b, sizeof b, "KVM_SET_MSRS: MSR %#x was refused", msrs[static_cast<std::size_t>(n)].index);
        throw ConfigError(b);
    }
}

kvm_regs VcpuFd::get_regs() const {
    kvm_regs r{};
    must_ioctl(fd_.get(), KVM_GET_REGS, &r, "KVM_GET_REGS");
    return r;
}
void VcpuFd::set_regs(const kvm_regs& r) { must_ioctl(fd_.get(), KVM_SET_REGS, &r, "KVM_SET_REGS"); }
kvm_sregs VcpuFd::get_sregs() const {
    kvm_sregs s{};
    must_ioctl(fd_.get(), KVM_GET_SREGS, &s, "KVM_GET_SREGS");
    return s;
}
void VcpuFd::set_sregs(const kvm_sregs& s) { must_ioctl(fd_.get(), KVM_SET_SREGS, &s, "KVM_SET_SREGS"); }
void VcpuFd::set_fpu(const kvm_fpu& f) { must_ioctl(fd_.get(), KVM_SET_FPU, &f, "KVM_SET_FPU"); }
kvm_lapic_state VcpuFd::get_lapic() const {
    kvm_lapic_state l{};
    must_ioctl(fd_.get(), KVM_GET_LAPIC, &l, "KVM_GET_LAPIC");
    return l;
}
void VcpuFd::set_lapic(const kvm_lapic_state& l) { must_ioctl(fd_.get(), KVM_SET_LAPIC, &l, "KVM_SET_LAPIC"); }

} // namespace ember
