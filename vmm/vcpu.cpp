#include "vmm/vcpu.hpp"

#include "vmm/base/bus.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sys/ioctl.h>

namespace ember {

int vcpu_kick_signal() noexcept { return SIGRTMIN; }

void install_vcpu_kick_signal() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_handler = [](int) {};
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
        sigaction(vcpu_kick_signal(), &sa, nullptr);
    });
}

Vcpu::~Vcpu() {
    request_stop();
    join();
}

void Vcpu::configure(const std::vector<kvm_cpuid_entry2>& supported, const CpuTopology& topo, const KernelImage* boot,
                     const std::vector<MsrModifier>& msr_mods) {
    fd_.set_cpuid(cpuid_for_vcpu(supported, topo, fd_.index()));
    fd_.set_msrs(boot_msrs());
    if (!msr_mods.empty()) {
        // Firecracker reads the template's MSRs from the vCPU and refuses one KVM cannot read
        // (CpuConfigurationError::MsrNotSupported).
        std::vector<std::uint32_t> indices;
        for (const auto& m : msr_mods)
            if (std::find(indices.begin(), indices.end(), m.addr) == indices.end()) indices.push_back(m.addr);
        std::vector<kvm_msr_entry> current;
        try {
            current = fd_.get_msrs(indices);
        } catch (const ConfigError&) {
            for (std::uint32_t i : indices) {
                try {
                    (void)fd_.get_msrs({i});
                } catch (const ConfigError&) {
                    char buf[96];
                    std::snprintf(buf, sizeof buf, "Template changes an MSR entry not supported by KVM: Register Address: %x", i);
                    throw ConfigError(buf);
                }
            }
            throw;
        }
        fd_.set_msrs(apply_msr_modifiers(std::move(current), msr_mods));
    }
    fd_.set_fpu(boot_fpu());
    auto lapic = fd_.get_lapic();
    configure_lapic_lints(lapic);
    fd_.set_lapic(lapic);
    if (boot != nullptr) {
        fd_.set_regs(boot_regs(*boot));
        auto sregs = fd_.get_sregs();
        boot_sregs(*boot, sregs);
        fd_.set_sregs(sregs);
    }
}

void Vcpu::start(bool paused) {
    install_vcpu_kick_signal();
    if (paused) pause_.store(true);
    thread_ = std::thread([this] {
        char name[16];
        std::snprintf(name, sizeof name, "ember_vcpu%u", fd_.index());
        pthread_setname_np(pthread_self(), name);
        run_loop();
    });
    handle_ = thread_.native_handle();
    started_ = true;
}

VcpuState Vcpu::save_state() { return fd_.save_state(); }

void Vcpu::kick() noexcept {
    // immediate_exit covers the window between the loop's flag checks and KVM_RUN; the signal
    // interrupts a KVM_RUN already in progress. Flags are stored before this, and the loop
    // checks them after clearing immediate_exit, so no request is lost.
    __atomic_store_n(&fd_.run()->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (started_.load() && thread_.joinable()) pthread_kill(handle_, vcpu_kick_signal());
}

void Vcpu::request_stop() noexcept {
    stop_.store(true);
    {
        std::lock_guard lk(park_mu_);
    }
    park_cv_.notify_all();
    kick();
}

void Vcpu::request_pause() noexcept {
    pause_.store(true);
    kick();
}

bool Vcpu::wait_paused(std::chrono::milliseconds timeout) noexcept {
    std::unique_lock lk(park_mu_);
    return park_cv_.wait_for(lk, timeout, [&] { return parked_ || ended_ || !started_.load(); });
}

void Vcpu::resume() noexcept {
    {
        std::lock_guard lk(park_mu_);
        pause_.store(false);
    }
    park_cv_.notify_all();
}

void Vcpu::park_while_paused() noexcept {
    // Tell the guest (through kvmclock) that the host stopped it, so its soft-lockup and
    // clocksource watchdogs do not misread the pause (api.rst KVM_KVMCLOCK_CTRL). EINVAL just
    // means the guest has not enabled kvmclock.
    (void)::ioctl(fd_.fd(), KVM_KVMCLOCK_CTRL, 0);
    std::unique_lock lk(park_mu_);
    parked_ = true;
    park_cv_.notify_all();
    park_cv_.wait(lk, [&] { return !pause_.load() || stop_.load(); });
    parked_ = false;
    __atomic_store_n(&fd_.run()->immediate_exit, 0, __ATOMIC_SEQ_CST);
}

bool Vcpu::wait_ended(std::chrono::milliseconds timeout) noexcept {
    std::unique_lock lk(park_mu_);
    return park_cv_.wait_for(lk, timeout, [&] { return ended_ || !started_.load(); });
}

void Vcpu::join() noexcept {
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

std::string Vcpu::dump_registers(const VcpuFd& fd) noexcept {
    try {
        const kvm_regs r = fd.get_regs();
        const kvm_sregs s = fd.get_sregs();
        char b[640];
        std::snprintf(b, sizeof b,
                      "rip=0x%llx rsp=0x%llx rbp=0x%llx rflags=0x%llx rax=0x%llx rbx=0x%llx rcx=0x%llx rdx=0x%llx rsi=0x%llx "
                      "rdi=0x%llx cr0=0x%llx cr2=0x%llx cr3=0x%llx cr4=0x%llx efer=0x%llx cs=0x%x/base 0x%llx ss=0x%x",
                      static_cast<unsigned long long>(r.rip), static_cast<unsigned long long>(r.rsp),
                      static_cast<unsigned long long>(r.rbp), static_cast<unsigned long long>(r.rflags),
                      static_cast<unsigned long long>(r.rax), static_cast<unsigned long long>(r.rbx),
                      static_cast<unsigned long long>(r.rcx), static_cast<unsigned long long>(r.rdx),
                      static_cast<unsigned long long>(r.rsi), static_cast<unsigned long long>(r.rdi),
                      static_cast<unsigned long long>(s.cr0), static_cast<unsigned long long>(s.cr2),
                      static_cast<unsigned long long>(s.cr3), static_cast<unsigned long long>(s.cr4),
                      static_cast<unsigned long long>(s.efer), s.cs.selector,
                      static_cast<unsigned long long>(s.cs.base), s.ss.selector);
        return b;
    } catch (const std::exception& e) {
        return std::string("registers unavailable: ") + e.what();
    }
}

bool Vcpu::handle_io(kvm_run* run) noexcept {
    const auto& io = run->io;
    // data_offset and size*count come from the kernel; check them against the kvm_run mapping anyway.
    const std::uint64_t total = std::uint64_t{io.size} * io.count;
    if (io.size == 0 || io.size > 4 || io.data_offset > fd_.run_size() || total > fd_.run_size() - io.data_offset)
        return false;
    auto* base = reinterpret_cast<std::uint8_t*>(run) + io.data_offset;
    for (std::uint32_t i = 0; i < io.count; ++i) {
        std::span<std::uint8_t> d(base + std::size_t{i} * io.size, io.size);
        if (io.direction == KVM_EXIT_IO_OUT) {
            counters_.exit_io_out.fetch_add(1, std::memory_order_relaxed);
            pio_.write(io.port, d);
        } else {
            counters_.exit_io_in.fetch_add(1, std::memory_order_relaxed);
            pio_.read(io.port, d);
        }
    }
    return true;
}

void Vcpu::run_loop() noexcept {
    kvm_run* run = fd_.run();
    const unsigned idx = fd_.index();
    auto fatal = [&](const std::string& what) {
        counters_.failures.fetch_add(1, std::memory_order_relaxed);
        const std::string detail = "vCPU " + std::to_string(idx) + ": " + what + "; " + dump_registers(fd_);
        sink_.vcpu_exited(idx, VmExitKind::Fatal, detail);
    };
    struct EndGuard {
        Vcpu& v;
        ~EndGuard() {
            {
                std::lock_guard lk(v.park_mu_);
                v.ended_ = true;
            }
            v.park_cv_.notify_all();
        }
    } end_guard{*this};
    // True after KVM_RUN returned an exit: its PIO/MMIO completes on the next KVM_RUN only.
    bool exit_pending = false;
    while (!stop_.load(std::memory_order_acquire)) {
        if (pause_.load()) {
            // Park with no exit pending, so save_state() reads the registers after the
            // instruction. Completing happens here, on this thread: a completion that causes
            // another exit (a rep string PIO, an MMIO that goes on) is handled below like any
            // exit, then this is tried again (api.rst KVM_RUN immediate_exit).
            bool done = true;
            if (exit_pending) {
                try {
                    done = fd_.complete_pending_exit();
                } catch (const std::exception& e) {
                    fatal(e.what());
                    return;
                }
            }
            if (done) {
                exit_pending = false;
                park_while_paused();
                continue;
            }
        } else if (::ioctl(fd_.fd(), KVM_RUN, 0) < 0) {
            exit_pending = false;
            if (errno == EINTR || errno == EAGAIN) {
                __atomic_store_n(&run->immediate_exit, 0, __ATOMIC_SEQ_CST);
                continue;
            }
            fatal(std::string("KVM_RUN failed: ") + std::strerror(errno));
            return;
        }
        exit_pending = true;
        switch (run->exit_reason) {
        case KVM_EXIT_IO:
            if (!handle_io(run)) {
                fatal("malformed KVM_EXIT_IO");
                return;
            }
            break;
        case KVM_EXIT_MMIO: {
            auto& m = run->mmio;
            if (m.len > sizeof m.data) {
                fatal("malformed KVM_EXIT_MMIO");
                return;
            }
            std::span<std::uint8_t> d(m.data, m.len);
            if (m.is_write) {
                counters_.exit_mmio_write.fetch_add(1, std::memory_order_relaxed);
                mmio_.write(m.phys_addr, d);
            } else {
                counters_.exit_mmio_read.fetch_add(1, std::memory_order_relaxed);
                mmio_.read(m.phys_addr, d);
            }
            break;
        }
        case KVM_EXIT_INTR:
            break;
        case KVM_EXIT_HLT:
            fatal("guest halted with interrupts it cannot receive (KVM_EXIT_HLT)");
            return;
        case KVM_EXIT_SHUTDOWN:
            fatal("triple fault (KVM_EXIT_SHUTDOWN)");
            return;
        case KVM_EXIT_FAIL_ENTRY: {
            char b[96];
            std::snprintf(b, sizeof b, "VM entry failed (KVM_EXIT_FAIL_ENTRY, reason %#llx)",
                          static_cast<unsigned long long>(run->fail_entry.hardware_entry_failure_reason));
            fatal(b);
            return;
        }
        case KVM_EXIT_INTERNAL_ERROR:
            fatal("KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror " + std::to_string(run->internal.suberror) + ")");
            return;
        case KVM_EXIT_SYSTEM_EVENT:
            if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN || run->system_event.type == KVM_SYSTEM_EVENT_RESET) {
                sink_.vcpu_exited(idx, VmExitKind::GuestReset, "KVM system event " + std::to_string(run->system_event.type));
            } else {
                fatal("KVM system event " + std::to_string(run->system_event.type));
            }
            return;
        default:
            fatal("unexpected KVM exit reason " + std::to_string(run->exit_reason));
            return;
        }
    }
}

} // namespace ember
