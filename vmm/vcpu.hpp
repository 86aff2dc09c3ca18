#pragma once
// One thread per vCPU (`ember_vcpuN`) running KVM_RUN and dispatching PIO/MMIO exits to the
// buses. The loop never throws; how a vCPU ends is reported to the VM through ExitSink.

#include "vmm/kvm/kvm.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"
#include "vmm/arch/x86_64/x86_cpu.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cstdint>
#include <pthread.h>
#include <string>
#include <thread>
#include <vector>

namespace ember {

class Bus;

enum class VmExitKind {
    GuestReset,    // i8042 reset or a clean KVM system event: exit status 0
    HostRequest,   // SIGTERM/SIGINT or the API: exit status 0
    Fatal,         // triple fault, failed entry, internal error: non-zero exit
};

class ExitSink {
public:
    virtual ~ExitSink() = default;
    // Called once per vCPU that stops on its own, from that vCPU's thread.
    virtual void vcpu_exited(unsigned index, VmExitKind kind, const std::string& detail) noexcept = 0;
};

struct VcpuCounters {
    std::atomic<std::uint64_t> exit_io_in{0}, exit_io_out{0}, exit_mmio_read{0}, exit_mmio_write{0};
    std::atomic<std::uint64_t> failures{0};
};

class Vcpu {
public:
    Vcpu(VcpuFd fd, Bus& pio, Bus& mmio, ExitSink& sink) : fd_(std::move(fd)), pio_(pio), mmio_(mmio), sink_(sink) {}
    ~Vcpu();
    Vcpu(const Vcpu&) = delete;
    Vcpu& operator=(const Vcpu&) = delete;

    // CPUID, MSRs, FPU and LAPIC for every vCPU; registers too for the boot vCPU (`boot` set).
    // `msr_mods`: a CPU template's MSR modifiers, applied to this vCPU's values after the boot MSRs.
    void configure(const std::vector<kvm_cpuid_entry2>& supported, const CpuTopology& topo, const KernelImage* boot,
                   const std::vector<MsrModifier>& msr_mods = {});

    // `paused`: the thread parks before its first KVM_RUN (a VM restored without resume_vm).
    void start(bool paused = false);
    // The vCPU's state for a snapshot. Precondition: paused and parked (wait_paused()) or not
    // started: the thread completed its last PIO/MMIO exit before parking (api.rst KVM_RUN,
    // immediate_exit), so nothing runs KVM_RUN here. Throws SystemError.
    VcpuState save_state();
    // A snapshot's state, before start(). Throws SystemError.
    void restore_state(const VcpuState& s) { fd_.restore_state(s); }
    // Makes KVM_RUN return (immediate_exit + a signal) and the loop end; safe from any thread.
    void request_stop() noexcept;
    void join() noexcept;
    // True once the thread has left its loop (or never started); false after `timeout`.
    bool wait_ended(std::chrono::milliseconds timeout) noexcept;

    // Pause: the thread leaves KVM_RUN and parks until resume(). wait_paused() returns true once
    // the thread is parked (or has ended), false if it did not park within `timeout`.
    void request_pause() noexcept;
    bool wait_paused(std::chrono::milliseconds timeout) noexcept;
    void resume() noexcept;

    unsigned index() const noexcept { return fd_.index(); }
    const VcpuCounters& counters() const noexcept { return counters_; }

    // Register dump for fatal exits ("rip=... rsp=... cr0=...").
    static std::string dump_registers(const VcpuFd& fd) noexcept;

private:
    void run_loop() noexcept;
    bool handle_io(kvm_run* run) noexcept;
    void kick() noexcept;
    void park_while_paused() noexcept;

    VcpuFd fd_;
    Bus& pio_;
    Bus& mmio_;
    ExitSink& sink_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> pause_{false};
    std::atomic<bool> started_{false};
    std::mutex park_mu_;
    std::condition_variable park_cv_;
    bool parked_ = false;  // guarded by park_mu_
    bool ended_ = false;   // guarded by park_mu_
    pthread_t handle_{};
    VcpuCounters counters_;
};

// Installs the (empty) handler of the signal used to kick vCPUs out of KVM_RUN. Idempotent.
void install_vcpu_kick_signal();
int vcpu_kick_signal() noexcept;

} // namespace ember
