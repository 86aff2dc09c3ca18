#include "vmm/vm.hpp"

#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "vmm/base/console_output.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/host_console.hpp"

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstdio>
#include <cstdlib>

namespace ember {

Vm::Vm(boost::asio::io_context& io, GuestMemory mem, ExitHandler on_exit)
    : io_(io), on_exit_(std::move(on_exit)), mem_(std::move(mem)), devices_(io) {}

Vm::~Vm() {
    for (auto& v : vcpus_) v->request_stop();
    for (auto& v : vcpus_) v->join();
}

void Vm::start() {
    host_console_->start();
    for (auto& v : vcpus_) v->start();
}

bool Vm::pause() {
    for (auto& v : vcpus_) v->request_pause();
    bool all = true;
    for (auto& v : vcpus_) all = v->wait_paused(std::chrono::seconds(2)) && all;
    paused_ = true;
    return all;
}

void Vm::resume() {
    for (auto& v : vcpus_) v->resume();
    paused_ = false;
}

bool Vm::send_ctrl_alt_del() noexcept { return i8042_->send_ctrl_alt_del(); }

void Vm::request_exit(VmExitKind kind, const std::string& detail) noexcept {
    std::string why;
    {
        std::lock_guard lk(exit_mu_);
        if (exit_) return;
        try {
            exit_.emplace(kind, detail);
            why = detail;
        } catch (...) {
            exit_.emplace(kind, std::string());
        }
    }
    for (auto& v : vcpus_) v->request_stop();
    const int status = kind == VmExitKind::Fatal ? 1 : 0;
    try {
        boost::asio::post(io_, [this, status, why] {
            join_vcpus_or_die();
            host_console_.reset();
            // The guest's last lines (its exit status, for one) must reach the host.
            console_out_->drain(std::chrono::seconds(2));
            LOG_INFO("unclaimed accesses: PIO %llu reads %llu writes, MMIO %llu reads %llu writes",
                     static_cast<unsigned long long>(devices_.pio().unclaimed_reads()),
                     static_cast<unsigned long long>(devices_.pio().unclaimed_writes()),
                     static_cast<unsigned long long>(devices_.mmio().unclaimed_reads()),
                     static_cast<unsigned long long>(devices_.mmio().unclaimed_writes()));
            if (status != 0) LOG_ERROR("%s", why.c_str());
            else LOG_INFO("VM ended: %s", why.c_str());
            if (on_exit_) on_exit_(status, why);
        });
    } catch (...) {
        io_.stop(); // cannot allocate the notification: stop the loop, the owner tears down
    }
}

void Vm::join_vcpus_or_die() noexcept {
    // A kicked vCPU leaves KVM_RUN within microseconds. One that has not after the deadline is
    // wedged inside the kernel (seen only under nested SVM): joining it would block this thread,
    // and with it the API and signal handling, forever. Its thread still uses the VM's fds and
    // guest memory, so nothing can be torn down safely either: report it and end the process.
    const auto deadline = std::chrono::steady_clock::now() + VCPU_STOP_DEADLINE;
    std::string stuck;
    for (auto& v : vcpus_) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (!v->wait_ended(std::max(left, std::chrono::milliseconds(0)))) stuck += " " + std::to_string(v->index());
    }
    if (!stuck.empty()) {
        LOG_ERROR("vCPU(s)%s did not leave KVM_RUN within %lld s of the stop request; exiting without tearing down the VM",
                  stuck.c_str(), static_cast<long long>(VCPU_STOP_DEADLINE.count()));
        std::fflush(stdout);
        std::_Exit(1);
    }
    for (auto& v : vcpus_) v->join();
}

void Vm::vcpu_exited(unsigned, VmExitKind kind, const std::string& detail) noexcept { request_exit(kind, detail); }

} // namespace ember
