#include "vmm/vm.hpp"

#include "devices/legacy/boot_timer.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/balloon/device.hpp"
#include "vmm/base/console_output.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"
#include "vmm/base/error.hpp"
#include "vmm/host_console.hpp"
#include "vmm/snapshot_file.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>
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

void Vm::start(bool paused) {
    if (host_console_) host_console_->start();
    for (auto& v : vcpus_) v->start(paused);
    if (paused) {
        for (auto& v : vcpus_)
            if (!v->wait_paused(std::chrono::seconds(2))) LOG_WARN("vCPU %u did not park within 2 s of its start", v->index());
        paused_ = true;
    }
}

void Vm::create_snapshot(const std::string& snapshot_path, const std::string& mem_path, std::string vm_config,
                         SnapshotType type) {
    if (!paused_) throw ConfigError("the microVM must be paused (PATCH /vm {\"state\": \"Paused\"}) before a snapshot");
    for (auto& v : vcpus_)
        if (!v->wait_paused(std::chrono::seconds(2))) throw ConfigError("vCPU " + std::to_string(v->index()) + " is not parked");
    // A copy-on-write drive's disk is its overlay in this process plus the base: a snapshot
    // would record the base's path alone and restore a disk without the guest's writes.
    for (const auto& slot : devices_.virtio_slots())
        if (auto blk = std::dynamic_pointer_cast<virtio::block::BlockDevice>(slot.dev); blk && blk->config().cow)
            throw ConfigError("drive " + slot.id + ": a copy-on-write drive cannot be snapshotted yet");
    // A passt link is a socket to a process of this run; a restored VM could not reach it.
    for (const auto& slot : devices_.virtio_slots())
        if (auto net = std::dynamic_pointer_cast<virtio::net::NetDevice>(slot.dev); net && net->config().passt_socket)
            throw ConfigError("network interface " + slot.id + ": a passt link cannot be snapshotted yet");
    SnapshotFile s;
    s.ember_version = EMBER_VERSION;
    s.cpu_vendor = host_cpu().vendor;
    s.vm_config = std::move(vm_config);
    s.diff = type == SnapshotType::Diff;
    for (const auto& r : mem_.regions()) s.memory.push_back({r.range.start(), r.range.size(), r.offset});
    // Devices first: a block device completes its requests in flight, which writes guest memory
    // and raises interrupts; the irqchip and the vCPUs are read after that.
    for (const auto& slot : devices_.virtio_slots()) {
        SnapshotDevice d{slot.id, slot.base, slot.gsi, {}};
        if (auto blk = std::dynamic_pointer_cast<virtio::block::BlockDevice>(slot.dev)) d.state = blk->save();
        else if (auto net = std::dynamic_pointer_cast<virtio::net::NetDevice>(slot.dev)) d.state = net->save();
        else if (auto con = std::dynamic_pointer_cast<virtio::console::ConsoleDevice>(slot.dev)) d.state = con->save();
        else if (auto rng = std::dynamic_pointer_cast<virtio::rng::EntropyDevice>(slot.dev)) d.state = rng->save();
        else if (auto vs = std::dynamic_pointer_cast<virtio::vsock::VsockDevice>(slot.dev)) d.state = vs->save();
        else if (auto bal = std::dynamic_pointer_cast<virtio::balloon::BalloonDevice>(slot.dev)) d.state = bal->save();
        else throw ConfigError("virtio device \"" + slot.id + "\" cannot be saved in a snapshot");
        s.devices.push_back(std::move(d));
    }
    s.serial = serial_->save();
    s.i8042 = i8042_->save();
    if (boot_timer_) s.boot_timer = boot_timer_->save();
    s.vm = vm_fd_->save_state();
    for (auto& v : vcpus_) s.vcpus.push_back(v->save_state());
    // The dirty pages are taken before RAM is written (a device writing guest memory meanwhile
    // marks its pages again) and given back if the snapshot fails, so the next Diff still holds
    // them. A Full takes them only to start the next Diff from itself (Firecracker #4536).
    DirtyBitmaps dirty;
    if (type == SnapshotType::Diff || track_dirty_) dirty = take_dirty(mem_, *vm_fd_, track_dirty_);
    // Full: both files are written beside their targets and renamed over them at the end: a failed
    // create leaves an earlier snapshot at those paths intact, and a VM whose memory is mapped
    // from `mem_path` (it was loaded from it) keeps its mapping of the old file. Diff: the memory
    // file is written in place (an existing one of RAM's size is merged into, as Firecracker).
    const std::string mem_tmp = mem_path + ".tmp", snap_tmp = snapshot_path + ".tmp";
    try {
        if (type == SnapshotType::Diff) {
            const std::uint64_t pages = write_diff_memory(mem_, dirty, mem_path);
            LOG_INFO("Diff snapshot: %llu dirty pages of %llu written to %s", static_cast<unsigned long long>(pages),
                     static_cast<unsigned long long>(mem_.total_size() / GuestMemory::PAGE_SIZE), mem_path.c_str());
        } else {
            write_full_memory(mem_, mem_tmp);
        }
        write_snapshot_file(snap_tmp, s);
        if (type == SnapshotType::Full && ::rename(mem_tmp.c_str(), mem_path.c_str()) != 0)
            throw ConfigError("cannot rename " + mem_tmp + " to " + mem_path + ": " + std::strerror(errno));
        if (::rename(snap_tmp.c_str(), snapshot_path.c_str()) != 0)
            throw ConfigError("cannot rename " + snap_tmp + " to " + snapshot_path + ": " + std::strerror(errno));
    } catch (...) {
        if (type == SnapshotType::Full) ::unlink(mem_tmp.c_str());
        ::unlink(snap_tmp.c_str());
        restore_dirty(mem_, dirty, track_dirty_);
        throw;
    }
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

void Vm::refire_interrupts() noexcept {
    serial_->refire_interrupt();
    i8042_->refire_interrupt();
    for (const auto& slot : devices_.virtio_slots()) slot.dev->refire_interrupt();
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
