#include "vmm/kvm/kvm.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/logger.hpp"
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

constexpr std::uint32_t MSR_IA32_TSC_DEADLINE = 0x6e0;
constexpr std::uint32_t MSR_HYPERV_FIRST = 0x4000'0000; // Hyper-V's synthetic MSRs (TLFS)
constexpr std::uint32_t MSR_HYPERV_LAST = 0x4000'00ff;

std::vector<std::uint32_t> read_msr_index_list(int kvm_fd) {
    // KVM_GET_MSR_INDEX_LIST answers E2BIG with nmsrs set to the list's length (api.rst).
    kvm_abi::MsrListHeader probe{0};
    if (xioctl(kvm_fd, kvm_abi::GET_MSR_INDEX_LIST, &probe) == 0) return {};
    if (errno != E2BIG) throw_errno("KVM_GET_MSR_INDEX_LIST");
    const std::uint32_t n = probe.nmsrs;
    std::vector<std::byte> buf(sizeof(kvm_abi::MsrListHeader) + std::size_t{n} * sizeof(std::uint32_t));
    const kvm_abi::MsrListHeader hdr{n};
    std::memcpy(buf.data(), &hdr, sizeof hdr);
    must_ioctl(kvm_fd, kvm_abi::GET_MSR_INDEX_LIST, buf.data(), "KVM_GET_MSR_INDEX_LIST");
    kvm_abi::MsrListHeader got{};
    std::memcpy(&got, buf.data(), sizeof got);
    std::vector<std::uint32_t> out(std::min(got.nmsrs, n));
    std::memcpy(out.data(), buf.data() + sizeof hdr, out.size() * sizeof(std::uint32_t));
    return out;
}

// KVM_GET_MSRS for indices[0, count), count <= MAX_MSRS_PER_CALL, into out[0, count). KVM stops at
// the first MSR it refuses: returns how many were read.
std::size_t get_msr_chunk(int vcpu_fd, const std::uint32_t* indices, std::size_t count, kvm_msr_entry* out) {
    std::vector<std::byte> buf(sizeof(kvm_abi::MsrsHeader) + count * sizeof(kvm_msr_entry));
    const kvm_abi::MsrsHeader hdr{static_cast<std::uint32_t>(count), 0};
    std::memcpy(buf.data(), &hdr, sizeof hdr);
    for (std::size_t i = 0; i < count; ++i) {
        kvm_msr_entry e{};
        e.index = indices[i];
        std::memcpy(buf.data() + sizeof hdr + i * sizeof e, &e, sizeof e);
    }
    const int n = must_ioctl(vcpu_fd, kvm_abi::GET_MSRS, buf.data(), "KVM_GET_MSRS");
    const std::size_t got = std::min(static_cast<std::size_t>(n), count);
    std::memcpy(out, buf.data() + sizeof hdr, got * sizeof(kvm_msr_entry));
    return got;
}

[[noreturn]] void throw_msr_refused(const char* ioctl_name, std::uint32_t index) {
    char b[64];
    std::snprintf(b, sizeof b, "%s: MSR %#x was refused", ioctl_name, index);
    throw ConfigError(b);
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

Kvm Kvm::open(const std::string& path) { return open(path, {}, {}); }

Kvm Kvm::open(const std::string& path, const std::vector<std::uint32_t>& add, const std::vector<std::uint32_t>& remove) {
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
    auto removed = [&](long id) { return std::find(remove.begin(), remove.end(), static_cast<std::uint32_t>(id)) != remove.end(); };
    for (const auto& cap : required_caps())
        if (!removed(cap.id) && kvm.check_extension(cap.id) <= 0)
            throw ConfigError(std::string("KVM lacks a required capability: ") + cap.name);
    std::string missing;
    for (std::uint32_t cap : add)
        if (kvm.check_extension(static_cast<long>(cap)) <= 0) missing += (missing.empty() ? "" : ", ") + std::to_string(cap);
    if (!missing.empty()) throw ConfigError("Missing KVM capabilities: " + missing);
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
    kvm.msr_index_list_ = read_msr_index_list(fd);
    return kvm;
}

int Kvm::check_extension(long cap) const noexcept { return xioctl(fd_.get(), KVM_CHECK_EXTENSION, cap); }
std::uint32_t Kvm::adjust_clock_flags() const noexcept {
    const int r = check_extension(KVM_CAP_ADJUST_CLOCK);
    return r > 0 ? static_cast<std::uint32_t>(r) : 0;
}

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

void VmFd::register_memory(const GuestMemory& mem, bool log_dirty) {
    std::uint32_t slot = 0;
    for (const auto& r : mem.regions()) {
        kvm_userspace_memory_region region{};
        region.slot = slot++;
        region.flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0u;
        region.guest_phys_addr = r.range.start().raw();
        region.memory_size = r.range.size();
        region.userspace_addr = reinterpret_cast<std::uint64_t>(r.host);
        must_ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");
    }
}

std::vector<std::uint64_t> VmFd::get_dirty_log(std::uint32_t slot, std::uint64_t pages) const {
    // KVM copies ALIGN(npages, BITS_PER_LONG) / 8 bytes (kvm_get_dirty_log): whole 64-bit words.
    std::vector<std::uint64_t> bitmap(static_cast<std::size_t>((pages + 63) / 64));
    kvm_dirty_log log{};
    log.slot = slot;
    log.dirty_bitmap = bitmap.data();
    must_ioctl(fd_.get(), KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
    return bitmap;
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

kvm_irqchip VmFd::get_irqchip(std::uint32_t chip_id) const {
    kvm_irqchip c{};
    c.chip_id = chip_id;
    must_ioctl(fd_.get(), KVM_GET_IRQCHIP, &c, "KVM_GET_IRQCHIP");
    return c;
}
void VmFd::set_irqchip(const kvm_irqchip& chip) { must_ioctl(fd_.get(), KVM_SET_IRQCHIP, &chip, "KVM_SET_IRQCHIP"); }
kvm_pit_state2 VmFd::get_pit() const {
    kvm_pit_state2 p{};
    must_ioctl(fd_.get(), KVM_GET_PIT2, &p, "KVM_GET_PIT2");
    return p;
}
void VmFd::set_pit(const kvm_pit_state2& pit) { must_ioctl(fd_.get(), KVM_SET_PIT2, &pit, "KVM_SET_PIT2"); }
kvm_clock_data VmFd::get_clock() const {
    kvm_clock_data c{};
    must_ioctl(fd_.get(), KVM_GET_CLOCK, &c, "KVM_GET_CLOCK");
    return c;
}
void VmFd::set_clock(const kvm_clock_data& clock) { must_ioctl(fd_.get(), KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK"); }

VmState VmFd::save_state() const {
    VmState s;
    s.pic_master = get_irqchip(KVM_IRQCHIP_PIC_MASTER);
    s.pic_slave = get_irqchip(KVM_IRQCHIP_PIC_SLAVE);
    s.ioapic = get_irqchip(KVM_IRQCHIP_IOAPIC);
    s.pit = get_pit();
    s.clock = get_clock();
    return s;
}

void VmFd::restore_state(const VmState& state, bool clock_realtime) {
    if (clock_realtime && (state.clock.flags & KVM_CLOCK_REALTIME) == 0)
        throw ConfigError("clock_realtime requested but not present in the snapshot state");
    // The chips before the PIT: a tick the restored PIT delivers lands in the restored chips
    // instead of being overwritten by them.
    set_irqchip(state.pic_master);
    set_irqchip(state.pic_slave);
    set_irqchip(state.ioapic);
    set_pit(state.pit);
    // KVM_GET_CLOCK's flags describe the reading (KVM_CLOCK_TSC_STABLE is output only) and
    // kernels before 5.16 refuse any flag on KVM_SET_CLOCK: the value alone goes back, with
    // KVM_CLOCK_REALTIME and its `realtime` only when asked (x86.c kvm_vm_ioctl_set_clock adds
    // now_real - realtime when positive).
    kvm_clock_data clock{};
    clock.clock = state.clock.clock;
    if (clock_realtime) {
        clock.flags = KVM_CLOCK_REALTIME;
        clock.realtime = state.clock.realtime;
    }
    set_clock(clock);
}

VcpuFd::VcpuFd(const Kvm& kvm, const VmFd& vm, unsigned index) : index_(index), msr_indices_(kvm.msr_index_list()) {
    int fd = xioctl(vm.fd(), KVM_CREATE_VCPU, static_cast<unsigned long>(index));
    if (fd < 0) throw_errno("KVM_CREATE_VCPU " + std::to_string(index));
    fd_.reset(fd);
    run_ = Mapping::map(kvm.vcpu_mmap_size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0, "kvm_run");
    // KVM lets a guest reach Hyper-V's MSRs only when its CPUID has Hyper-V's leaves, which
    // Ember's never has: they hold no guest state. Some read but refuse any host write
    // (HV_X64_MSR_TSC_FREQUENCY), so they are left out of the state.
    std::erase_if(msr_indices_, [](std::uint32_t i) { return i >= MSR_HYPERV_FIRST && i <= MSR_HYPERV_LAST; });
    // A TSC deadline is armed against the guest TSC at the time it is written: restore it after
    // IA32_TSC (KVM_SET_MSRS applies entries in order).
    std::stable_partition(msr_indices_.begin(), msr_indices_.end(),
                          [](std::uint32_t i) { return i != MSR_IA32_TSC_DEADLINE; });
}

std::vector<kvm_cpuid_entry2> VcpuFd::get_cpuid() const {
    // KVM_GET_CPUID2 answers E2BIG while nent is below the vCPU's table size.
    for (std::uint32_t n = 128; n <= 4096; n *= 2) {
        std::vector<std::byte> buf(sizeof(kvm_abi::CpuidHeader) + n * sizeof(kvm_cpuid_entry2));
        kvm_abi::CpuidHeader hdr{n, 0};
        std::memcpy(buf.data(), &hdr, sizeof hdr);
        if (xioctl(fd_.get(), kvm_abi::GET_CPUID2, buf.data()) == 0) {
            std::memcpy(&hdr, buf.data(), sizeof hdr);
            std::vector<kvm_cpuid_entry2> out(std::min(hdr.nent, n));
            std::memcpy(out.data(), buf.data() + sizeof hdr, out.size() * sizeof(kvm_cpuid_entry2));
            return out;
        }
        if (errno != E2BIG) throw_errno("KVM_GET_CPUID2");
    }
    throw SystemError("KVM_GET_CPUID2", E2BIG);
}

void VcpuFd::set_cpuid(const std::vector<kvm_cpuid_entry2>& entries) {
    std::vector<std::byte> buf(sizeof(kvm_abi::CpuidHeader) + entries.size() * sizeof(kvm_cpuid_entry2));
    const kvm_abi::CpuidHeader hdr{static_cast<std::uint32_t>(entries.size()), 0};
    std::memcpy(buf.data(), &hdr, sizeof hdr);
    std::memcpy(buf.data() + sizeof hdr, entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
    must_ioctl(fd_.get(), kvm_abi::SET_CPUID2, buf.data(), "KVM_SET_CPUID2");
}

std::vector<kvm_msr_entry> VcpuFd::get_msrs(const std::vector<std::uint32_t>& indices) const {
    std::vector<kvm_msr_entry> out(indices.size());
    for (std::size_t pos = 0; pos < indices.size();) {
        const std::size_t count = std::min(indices.size() - pos, kvm_abi::MAX_MSRS_PER_CALL);
        const std::size_t got = get_msr_chunk(fd_.get(), indices.data() + pos, count, out.data() + pos);
        if (got != count) throw_msr_refused("KVM_GET_MSRS", indices[pos + got]);
        pos += count;
    }
    return out;
}

void VcpuFd::set_msrs(const std::vector<kvm_msr_entry>& msrs) {
    for (std::size_t pos = 0; pos < msrs.size();) {
        const std::size_t count = std::min(msrs.size() - pos, kvm_abi::MAX_MSRS_PER_CALL);
        std::vector<std::byte> buf(sizeof(kvm_abi::MsrsHeader) + count * sizeof(kvm_msr_entry));
        const kvm_abi::MsrsHeader hdr{static_cast<std::uint32_t>(count), 0};
        std::memcpy(buf.data(), &hdr, sizeof hdr);
        std::memcpy(buf.data() + sizeof hdr, msrs.data() + pos, count * sizeof(kvm_msr_entry));
        const int n = must_ioctl(fd_.get(), kvm_abi::SET_MSRS, buf.data(), "KVM_SET_MSRS");
        if (static_cast<std::size_t>(n) != count) throw_msr_refused("KVM_SET_MSRS", msrs[pos + static_cast<std::size_t>(n)].index);
        pos += count;
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
kvm_fpu VcpuFd::get_fpu() const {
    kvm_fpu f{};
    must_ioctl(fd_.get(), KVM_GET_FPU, &f, "KVM_GET_FPU");
    return f;
}
void VcpuFd::set_fpu(const kvm_fpu& f) { must_ioctl(fd_.get(), KVM_SET_FPU, &f, "KVM_SET_FPU"); }
kvm_abi::XsaveRegion VcpuFd::get_xsave() const {
    kvm_abi::XsaveRegion x{};
    must_ioctl(fd_.get(), kvm_abi::GET_XSAVE, &x, "KVM_GET_XSAVE");
    return x;
}
void VcpuFd::set_xsave(const kvm_abi::XsaveRegion& x) { must_ioctl(fd_.get(), kvm_abi::SET_XSAVE, &x, "KVM_SET_XSAVE"); }
kvm_xcrs VcpuFd::get_xcrs() const {
    kvm_xcrs x{};
    must_ioctl(fd_.get(), KVM_GET_XCRS, &x, "KVM_GET_XCRS");
    return x;
}
void VcpuFd::set_xcrs(const kvm_xcrs& x) { must_ioctl(fd_.get(), KVM_SET_XCRS, &x, "KVM_SET_XCRS"); }
kvm_lapic_state VcpuFd::get_lapic() const {
    kvm_lapic_state l{};
    must_ioctl(fd_.get(), KVM_GET_LAPIC, &l, "KVM_GET_LAPIC");
    return l;
}
void VcpuFd::set_lapic(const kvm_lapic_state& l) { must_ioctl(fd_.get(), KVM_SET_LAPIC, &l, "KVM_SET_LAPIC"); }
kvm_mp_state VcpuFd::get_mp_state() const {
    kvm_mp_state m{};
    must_ioctl(fd_.get(), KVM_GET_MP_STATE, &m, "KVM_GET_MP_STATE");
    return m;
}
void VcpuFd::set_mp_state(const kvm_mp_state& m) { must_ioctl(fd_.get(), KVM_SET_MP_STATE, &m, "KVM_SET_MP_STATE"); }
kvm_vcpu_events VcpuFd::get_vcpu_events() const {
    kvm_vcpu_events e{};
    must_ioctl(fd_.get(), KVM_GET_VCPU_EVENTS, &e, "KVM_GET_VCPU_EVENTS");
    return e;
}
void VcpuFd::set_vcpu_events(const kvm_vcpu_events& e) {
    must_ioctl(fd_.get(), KVM_SET_VCPU_EVENTS, &e, "KVM_SET_VCPU_EVENTS");
}
kvm_debugregs VcpuFd::get_debugregs() const {
    kvm_debugregs d{};
    must_ioctl(fd_.get(), KVM_GET_DEBUGREGS, &d, "KVM_GET_DEBUGREGS");
    return d;
}
void VcpuFd::set_debugregs(const kvm_debugregs& d) { must_ioctl(fd_.get(), KVM_SET_DEBUGREGS, &d, "KVM_SET_DEBUGREGS"); }
// KVM_GET_TSC_KHZ and KVM_SET_TSC_KHZ pass the frequency as the ioctl's result and argument.
std::uint32_t VcpuFd::get_tsc_khz() const {
    return static_cast<std::uint32_t>(must_ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0, "KVM_GET_TSC_KHZ"));
}
void VcpuFd::set_tsc_khz(std::uint32_t khz) {
    must_ioctl(fd_.get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(khz), "KVM_SET_TSC_KHZ");
}

bool VcpuFd::complete_pending_exit() {
    kvm_run* r = run();
    __atomic_store_n(&r->immediate_exit, 1, __ATOMIC_SEQ_CST);
    // Not xioctl: EINTR is the expected answer, not one to retry.
    const int rc = ::ioctl(fd_.get(), KVM_RUN, 0);
    const int err = errno;
    __atomic_store_n(&r->immediate_exit, 0, __ATOMIC_SEQ_CST);
    if (rc == 0) return false;
    if (err != EINTR) throw SystemError("KVM_RUN (immediate_exit)", err);
    return true;
}

VcpuState VcpuFd::save_state() const {
    VcpuState s;
    // KVM_GET_MP_STATE first: it delivers pending INIT and SIPI (kvm_apic_accept_events), which
    // change registers and the LAPIC.
    s.mp_state = get_mp_state();
    s.regs = get_regs();
    s.sregs = get_sregs();
    s.fpu = get_fpu();
    s.xcrs = get_xcrs();
    s.xsave = get_xsave();
    s.debugregs = get_debugregs();
    s.lapic = get_lapic();
    s.tsc_khz = get_tsc_khz();
    s.cpuid = get_cpuid();
    // KVM lists every MSR the host supports; one outside this vCPU's CPUID may be refused to a
    // host read on some kernels, and the guest cannot hold state in it either: it is left out.
    s.msrs.resize(msr_indices_.size());
    std::size_t kept = 0;
    for (std::size_t pos = 0; pos < msr_indices_.size();) {
        const std::size_t count = std::min(msr_indices_.size() - pos, kvm_abi::MAX_MSRS_PER_CALL);
        const std::size_t got = get_msr_chunk(fd_.get(), msr_indices_.data() + pos, count, s.msrs.data() + kept);
        kept += got;
        pos += got;
        if (got < count) {
            LOG_DEBUG("vCPU %u: KVM_GET_MSRS refuses MSR %#x; not saved", index_, msr_indices_[pos]);
            ++pos;
        }
    }
    s.msrs.resize(kept);
    // Last, as restore_state() sets it last: KVM_SET_REGS and KVM_SET_SREGS discard or queue
    // pending exceptions and interrupts, which these events then describe exactly.
    s.events = get_vcpu_events();
    return s;
}

void VcpuFd::restore_state(const VcpuState& s) {
    // The TSC rate first: KVM converts every TSC value written below at the current rate.
    if (s.tsc_khz != 0 && s.tsc_khz != get_tsc_khz()) set_tsc_khz(s.tsc_khz);
    // CPUID before anything it gates (XCR0 bits, XSAVE components, MSRs).
    set_cpuid(s.cpuid);
    set_mp_state(s.mp_state);
    set_regs(s.regs);
    // Also sets IA32_APIC_BASE, which KVM_SET_LAPIC needs in place.
    set_sregs(s.sregs);
    set_fpu(s.fpu);
    set_xcrs(s.xcrs);
    set_xsave(s.xsave);
    set_debugregs(s.debugregs);
    // Before the MSRs: KVM drops an IA32_TSC_DEADLINE write unless the LAPIC timer is in
    // TSC-deadline mode.
    set_lapic(s.lapic);
    set_msrs(s.msrs);
    set_vcpu_events(s.events);
}

} // namespace ember
