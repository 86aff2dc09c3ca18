#include "vmm/builder.hpp"

#include "devices/legacy/boot_timer.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/balloon/device.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/rng/device.hpp"
#include "devices/virtio/vsock/device.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"
#include "vmm/arch/x86_64/kernel_loader.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/arch/x86_64/mptable.hpp"
#include "vmm/arch/x86_64/x86_boot.hpp"
#include "vmm/arch/x86_64/x86_cpu.hpp"
#include "vmm/base/console_output.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/drives.hpp"
#include "vmm/host_console.hpp"
#include "vmm/uffd_backend.hpp"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <type_traits>

namespace ember {
namespace {

struct OpenedFile {
    UniqueFd fd;
    std::uint64_t size;
};

OpenedFile open_regular(const std::string& path, const char* what) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw ConfigError(std::string(what) + " " + path + ": " + std::strerror(errno));
    UniqueFd owned(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw ConfigError(std::string(what) + " " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw ConfigError(std::string(what) + " " + path + " is not a regular file");
    return {std::move(owned), static_cast<std::uint64_t>(st.st_size)};
}

// Attaches to every TAP now, so a missing or busy one is a configuration error before KVM.
std::vector<std::pair<NetConfig, std::unique_ptr<virtio::net::Tap>>> open_taps(const std::vector<NetConfig>& nets) {
    std::vector<std::pair<NetConfig, std::unique_ptr<virtio::net::Tap>>> out;
    for (std::size_t i = 0; i < nets.size(); ++i) {
        for (std::size_t j = 0; j < i; ++j) {
            if (nets[i].iface_id == nets[j].iface_id) throw ConfigError("network interface id \"" + nets[i].iface_id + "\" is used twice");
            if (nets[i].host_dev_name == nets[j].host_dev_name)
                throw ConfigError("network interfaces " + nets[j].iface_id + " and " + nets[i].iface_id + " use the same TAP " + nets[i].host_dev_name);
            if (nets[i].guest_mac && nets[i].guest_mac == nets[j].guest_mac)
                throw ConfigError("network interfaces " + nets[j].iface_id + " and " + nets[i].iface_id + " have the same guest_mac");
        }
        out.emplace_back(nets[i], virtio::net::open_tap(nets[i]));
    }
    return out;
}

} // namespace

struct VmBuilder::HostResources {
    std::vector<OpenedDrive> drives; // root first: it becomes vda
    std::vector<std::pair<NetConfig, std::unique_ptr<virtio::net::Tap>>> taps;
    bool console_on_stdout = true;
    UniqueFd console_fd;
};

VmBuilder::HostResources VmBuilder::open_host_resources(const VmConfig& cfg) {
    HostResources r;
    r.drives = open_drives(cfg.drives);
    r.taps = open_taps(cfg.net);
    r.console_on_stdout = !cfg.console.serial_out_path;
    r.console_fd = r.console_on_stdout ? ConsoleOutput::dup_stdout() : ConsoleOutput::open_path(*cfg.console.serial_out_path);
    return r;
}

namespace {

// The saved states of a snapshot's virtio devices, each taken once, by kind and id.
class SavedDevices {
public:
    explicit SavedDevices(const SnapshotFile* snap) : snap_(snap), taken_(snap ? snap->devices.size() : 0, false) {}
    bool restoring() const noexcept { return snap_ != nullptr; }

    template <class State>
    const State& take(const std::string& id, const char* kind) {
        for (std::size_t i = 0; i < snap_->devices.size(); ++i) {
            const auto& d = snap_->devices[i];
            if (taken_[i] || d.id != id || !std::holds_alternative<State>(d.state)) continue;
            taken_[i] = true;
            last_ = i;
            return std::get<State>(d.state);
        }
        throw ConfigError(std::string("the snapshot has no state for the ") + kind + (id.empty() ? "" : " \"" + id + "\"") +
                          " of its configuration");
    }
    // The device just attached from take() sits in the slot it was saved from.
    void check_slot(const DeviceManager& dm) const {
        const auto& slot = dm.virtio_slots().back();
        const auto& saved = snap_->devices[last_];
        if (slot.base != saved.mmio_base || slot.gsi != saved.irq)
            throw ConfigError("snapshot device \"" + saved.id + "\" was at MMIO " + std::to_string(saved.mmio_base) + " IRQ " +
                              std::to_string(saved.irq) + "; its configuration puts it at " + std::to_string(slot.base) +
                              " IRQ " + std::to_string(slot.gsi));
    }
    void check_all_taken() const {
        for (std::size_t i = 0; i < taken_.size(); ++i)
            if (!taken_[i])
                throw ConfigError("the snapshot holds a device (\"" + snap_->devices[i].id + "\", slot " + std::to_string(i) +
                                  ") that its configuration does not have");
    }

private:
    const SnapshotFile* snap_;
    std::vector<bool> taken_;
    std::size_t last_ = 0;
};

} // namespace

void VmBuilder::attach_devices(Vm& vm, boost::asio::io_context& io, const VmConfig& cfg, const RunOptions& opts,
                               HostResources& res, const SnapshotFile* snap) {
    Vm* const v = &vm;
    DeviceManager& dm = vm.devices_;
    SavedDevices saved(snap);

    // Legacy devices at their fixed ports and ISA IRQs: COM1, the i8042, the boot timer.
    vm.console_out_ = std::make_shared<ConsoleOutput>(io, std::move(res.console_fd));
    Serial::Sink sink = [out = vm.console_out_](std::span<const std::uint8_t> b) { return out->write(b) == b.size(); };
    vm.serial_ = snap ? std::make_shared<Serial>(dm.irq_line(layout::IRQ_SERIAL), std::move(sink), snap->serial)
                      : std::make_shared<Serial>(dm.irq_line(layout::IRQ_SERIAL), std::move(sink));
    if (cfg.console.serial_rate_limiter) vm.serial_->set_output_limit(*cfg.console.serial_rate_limiter);
    dm.attach_pio(layout::PORT_COM1, 8, vm.serial_, "serial");
    auto on_reset = [v] { v->request_exit(VmExitKind::GuestReset, "guest reset through the i8042"); };
    vm.i8042_ = snap ? std::make_shared<I8042>(dm.irq_line(layout::IRQ_I8042), on_reset, snap->i8042)
                     : std::make_shared<I8042>(dm.irq_line(layout::IRQ_I8042), on_reset);
    dm.attach_pio(layout::PORT_I8042_DATA, 5, vm.i8042_, "i8042");
    if (opts.boot_timer) {
        vm.boot_timer_ = snap ? std::make_shared<BootTimer>(snap->boot_timer) : std::make_shared<BootTimer>();
        dm.attach_mmio(layout::BOOT_TIMER, 0x1000, vm.boot_timer_, "boot-timer");
    }
    dm.add_metrics("uart", "", [s = vm.serial_] { return s->counters().values(); });
    // Ember's: the host end of the console (stdout or serial_out_path), shared by both consoles.
    dm.add_metrics("console_output", "", [o = vm.console_out_] { return o->metrics().values(); });

    // Virtio devices, each on the next slot: drives (root first), network interfaces, vsock, the
    // console, entropy (Firecracker's attach_entropy_device comes last too).
    const GuestMemory& mem = vm.mem_;
    for (auto& d : res.drives) {
        const std::string id = d.cfg.drive_id;
        auto dev = saved.restoring()
                       ? virtio::block::BlockDevice::restore(mem, io, d.cfg, std::move(d.fd), d.size,
                                                             saved.take<virtio::block::BlockState>(id, "drive"))
                       : std::make_shared<virtio::block::BlockDevice>(mem, io, d.cfg, std::move(d.fd), d.size);
        dm.attach_virtio(std::move(dev), id, "block");
        if (saved.restoring()) saved.check_slot(dm);
    }
    for (auto& [net_cfg, tap] : res.taps) {
        auto dev = saved.restoring() ? virtio::net::NetDevice::restore(mem, io, net_cfg, std::move(tap),
                                                                       saved.take<virtio::net::NetState>(net_cfg.iface_id, "network interface"))
                                     : std::make_shared<virtio::net::NetDevice>(mem, io, net_cfg, std::move(tap));
        dm.attach_virtio(std::move(dev), net_cfg.iface_id, "net");
        if (saved.restoring()) saved.check_slot(dm);
    }
    if (cfg.vsock) {
        auto dev = saved.restoring()
                       ? virtio::vsock::VsockDevice::restore(mem, io, *cfg.vsock, saved.take<virtio::vsock::VsockState>("", "vsock device"))
                       : std::make_shared<virtio::vsock::VsockDevice>(mem, io, *cfg.vsock);
        dm.attach_virtio(std::move(dev), "", "vsock");
        if (saved.restoring()) saved.check_slot(dm);
    }
    std::shared_ptr<virtio::console::ConsoleDevice> console;
    if (cfg.console.device == ConsoleDevice::Virtio) {
        const auto host_size = res.console_on_stdout ? HostConsole::terminal_size() : std::nullopt;
        console = saved.restoring() ? virtio::console::ConsoleDevice::restore(
                                          mem, vm.console_out_, host_size, saved.take<virtio::console::ConsoleState>("", "virtio console"))
                                    : std::make_shared<virtio::console::ConsoleDevice>(mem, vm.console_out_, host_size);
        dm.attach_virtio(console, "", "virtio_console");
        if (saved.restoring()) saved.check_slot(dm);
    }
    if (opts.console_input) vm.host_console_ = std::make_unique<HostConsole>(io, *vm.serial_, console, res.console_on_stdout);
    if (cfg.entropy) {
        auto dev = saved.restoring() ? virtio::rng::EntropyDevice::restore(mem, io, *cfg.entropy, virtio::rng::host_random(),
                                                                           saved.take<virtio::rng::EntropyState>("", "entropy device"))
                                     : std::make_shared<virtio::rng::EntropyDevice>(mem, io, *cfg.entropy);
        dm.attach_virtio(std::move(dev), "", "entropy");
        if (saved.restoring()) saved.check_slot(dm);
    }
    // virtio-balloon (Firecracker's attach_balloon_device), last. Restored, it keeps the target,
    // the driver's `actual`, the statistics, the held stats buffer and the hinting ids, and
    // re-arms the statistics timer (Firecracker's balloon/persist.rs).
    if (cfg.balloon) {
        auto dev = saved.restoring() ? virtio::balloon::BalloonDevice::restore(mem, io, *cfg.balloon,
                                                                               saved.take<virtio::balloon::BalloonState>("", "balloon device"))
                                     : std::make_shared<virtio::balloon::BalloonDevice>(mem, io, *cfg.balloon);
        dm.attach_virtio(std::move(dev), "", "balloon");
        if (saved.restoring()) saved.check_slot(dm);
    }
    if (saved.restoring()) saved.check_all_taken();
}

std::unique_ptr<Vm> VmBuilder::for_boot(boost::asio::io_context& io, const VmConfig& cfg, const RunOptions& opts,
                                        Vm::ExitHandler on_exit) {
    if (!cfg.boot_source) throw ConfigError("no boot source: boot-source.kernel_image_path is required");
    const auto& m = cfg.machine;
    if (m.vcpu_count < 1 || m.vcpu_count > MAX_VCPUS)
        throw ConfigError("vcpu_count must be from 1 to " + std::to_string(MAX_VCPUS));
    if (m.mem_size_mib == 0) throw ConfigError("mem_size_mib must be at least 1");
    const auto& bs = *cfg.boot_source;
    // Firecracker resolves the template (and refuses a static one for the other CPU vendor)
    // before it creates the VM.
    const HostCpu host = host_cpu();
    const CustomCpuTemplate cpu_template = resolve_cpu_template(m.cpu_template, host);
    if (const auto* st = std::get_if<StaticCpuTemplate>(&m.cpu_template); st && !cpu_model_listed(*st, host.signature))
        LOG_WARN("CPU template %s: this CPU (CPUID.1:EAX %#x) is not a model Firecracker lists for it; "
                 "Firecracker refuses it (InvalidCpuModel), Ember applies it",
                 to_string(*st), host.signature);

    // Host resources first: every one that is missing or busy is a configuration error.
    HostResources res = open_host_resources(cfg);

    GuestMemory mem = layout::guest_memory(m.mem_size_mib * layout::MiB);
    auto kernel_file = open_regular(bs.kernel_image_path, "kernel image");
    const KernelImage kernel = load_kernel(kernel_file.fd.get(), kernel_file.size, bs.kernel_image_path, mem);
    std::optional<InitrdPlacement> initrd;
    if (bs.initrd_path) {
        auto f = open_regular(*bs.initrd_path, "initrd");
        initrd = load_initrd(f.fd.get(), f.size, *bs.initrd_path, kernel, mem);
    }

    std::unique_ptr<Vm> vm(new Vm(io, std::move(mem), std::move(on_exit)));
    DeviceManager& dm = vm->devices_;
    attach_devices(*vm, io, cfg, opts, res, nullptr);

    std::string device_args = root_args(res.drives);
    if (!dm.kernel_args().empty()) device_args += (device_args.empty() ? "" : " ") + dm.kernel_args();
    const std::string cmdline = add_kernel_args(bs.boot_args.value_or(DEFAULT_BOOT_ARGS), device_args);
    write_boot_info(vm->mem_, kernel, cmdline, initrd);
    write_mptable(vm->mem_, m.vcpu_count);

    // KVM last.
    vm->kvm_.emplace(Kvm::open(opts.kvm_path, added_kvm_caps(cpu_template), removed_kvm_caps(cpu_template)));
    vm->vm_fd_.emplace(*vm->kvm_);
    vm->vm_fd_->setup_x86_platform(layout::KVM_IDENTITY_MAP, layout::KVM_TSS);
    // track_dirty_pages: KVM logs vCPU writes, GuestMemory device writes, both from now on (after
    // a load, the first Diff holds what changed since the load, as Firecracker's).
    vm->track_dirty_ = cfg.machine.track_dirty_pages;
    vm->vm_fd_->register_memory(vm->mem_, vm->track_dirty_);
    if (vm->track_dirty_) vm->mem_.enable_dirty_tracking();
    dm.register_with(*vm->vm_fd_);
    // The template shapes KVM's table first; cpuid_for_vcpu() then sets topology, APIC ids and the
    // bits Ember needs on top (Firecracker: apply_template, then normalize in KvmVcpu::configure).
    const auto cpuid = apply_cpuid_modifiers(vm->kvm_->supported_cpuid(), cpu_template);
    const CpuTopology topo{m.vcpu_count, m.smt};
    for (unsigned i = 0; i < m.vcpu_count; ++i) {
        auto vcpu = std::make_unique<Vcpu>(VcpuFd(*vm->kvm_, *vm->vm_fd_, i), dm.pio(), dm.mmio(), *vm);
        vcpu->configure(cpuid, topo, i == 0 ? &kernel : nullptr, cpu_template.msr_modifiers);
        vm->vcpus_.push_back(std::move(vcpu));
    }
    return vm;
}

std::unique_ptr<Vm> VmBuilder::from_snapshot(boost::asio::io_context& io, const SnapshotFile& snap, const VmConfig& cfg,
                                             const SnapshotMemory& memory, const RunOptions& opts, Vm::ExitHandler on_exit,
                                             bool clock_realtime) {
    if (snap.arch != "x86_64") throw ConfigError("the snapshot is for " + snap.arch + ", not x86_64");
    const HostCpu host = host_cpu();
    if (snap.cpu_vendor != host.vendor)
        throw ConfigError("the snapshot was taken on an " + snap.cpu_vendor + " CPU; this host's is " + host.vendor);
    // Firecracker's workflow: merge the Diff's memory onto its base (ember snapshot-merge), then
    // load the state file of that Diff with the merged memory. Ember cannot tell the two apart.
    if (snap.diff)
        LOG_WARN("loading a Diff snapshot's state: its memory file must be the merge of the Diff onto its base "
                 "(ember snapshot-merge), or the pages the Diff left out read as zeros");
    if (snap.vcpus.size() != cfg.machine.vcpu_count)
        throw ConfigError("the snapshot holds " + std::to_string(snap.vcpus.size()) + " vCPUs; its configuration says " +
                          std::to_string(cfg.machine.vcpu_count));
    const auto layout_regions = layout::ram_regions(cfg.machine.mem_size_mib * layout::MiB);
    bool same = layout_regions.size() == snap.memory.size();
    std::uint64_t offset = 0;
    for (std::size_t i = 0; same && i < layout_regions.size(); ++i) {
        same = snap.memory[i].guest_addr == layout_regions[i].first && snap.memory[i].size == layout_regions[i].second &&
               snap.memory[i].file_offset == offset;
        offset += layout_regions[i].second;
    }
    if (!same) throw ConfigError("the snapshot's memory regions do not match its " + std::to_string(cfg.machine.mem_size_mib) + " MiB configuration");

    HostResources res = open_host_resources(cfg);
    // Uffd: anonymous RAM nothing has touched, handed to the page-fault handler before any device
    // restore reads guest memory (Firecracker's guest_memory_from_uffd, then the devices).
    std::optional<UffdBackend> uffd;
    GuestMemory mem = std::visit(
        [&](const auto& m) {
            if constexpr (std::is_same_v<std::decay_t<decltype(m)>, FileMemory>) {
                return GuestMemory::with_regions_from_file(layout_regions, m.fd, m.path);
            } else {
                GuestMemory g = GuestMemory::with_regions(layout_regions);
                uffd = connect_uffd_backend(g, m.socket_path);
                return g;
            }
        },
        memory);

    std::unique_ptr<Vm> vm(new Vm(io, std::move(mem), std::move(on_exit)));
    vm->uffd_ = std::move(uffd);
    DeviceManager& dm = vm->devices_;
    attach_devices(*vm, io, cfg, opts, res, &snap);

    // KVM: the platform as for_boot() sets it up (the in-kernel irqchip the LAPICs need), each
    // vCPU, then the saved irqchip, PIT and clock (Firecracker's order: the PIT and clock only
    // run once there are vCPUs), then the interrupt and notification eventfds, so an edge a
    // device raised while it was restored reaches the restored irqchip; then every pending
    // interrupt once more, for edges raised before KVM existed.
    vm->kvm_.emplace(Kvm::open(opts.kvm_path));
    if (clock_realtime && (vm->kvm_->adjust_clock_flags() & KVM_CLOCK_REALTIME) == 0)
        throw ConfigError("clock_realtime is not supported by this host's KVM (KVM_CAP_ADJUST_CLOCK lacks KVM_CLOCK_REALTIME: Linux 5.16 or later)");
    vm->vm_fd_.emplace(*vm->kvm_);
    vm->vm_fd_->setup_x86_platform(layout::KVM_IDENTITY_MAP, layout::KVM_TSS);
    // track_dirty_pages: KVM logs vCPU writes, GuestMemory device writes, both from now on (after
    // a load, the first Diff holds what changed since the load, as Firecracker's).
    vm->track_dirty_ = cfg.machine.track_dirty_pages;
    vm->vm_fd_->register_memory(vm->mem_, vm->track_dirty_);
    if (vm->track_dirty_) vm->mem_.enable_dirty_tracking();
    for (unsigned i = 0; i < cfg.machine.vcpu_count; ++i) {
        auto vcpu = std::make_unique<Vcpu>(VcpuFd(*vm->kvm_, *vm->vm_fd_, i), dm.pio(), dm.mmio(), *vm);
        vcpu->restore_state(snap.vcpus[i]);
        vm->vcpus_.push_back(std::move(vcpu));
    }
    vm->vm_fd_->restore_state(snap.vm, clock_realtime);
    dm.register_with(*vm->vm_fd_);
    vm->refire_interrupts();
    return vm;
}

} // namespace ember
