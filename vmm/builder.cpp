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

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>

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
    std::vector<OpenedDrive> drives = open_drives(cfg.drives); // root drive first: it becomes vda
    auto taps = open_taps(cfg.net);
    const bool console_on_stdout = !cfg.console.serial_out_path;
    UniqueFd console_fd = console_on_stdout ? ConsoleOutput::dup_stdout() : ConsoleOutput::open_path(*cfg.console.serial_out_path);

    GuestMemory mem = layout::guest_memory(m.mem_size_mib * layout::MiB);
    auto kernel_file = open_regular(bs.kernel_image_path, "kernel image");
    const KernelImage kernel = load_kernel(kernel_file.fd.get(), kernel_file.size, bs.kernel_image_path, mem);
    std::optional<InitrdPlacement> initrd;
    if (bs.initrd_path) {
        auto f = open_regular(*bs.initrd_path, "initrd");
        initrd = load_initrd(f.fd.get(), f.size, *bs.initrd_path, kernel, mem);
    }

    std::unique_ptr<Vm> vm(new Vm(io, std::move(mem), std::move(on_exit)));
    Vm* const v = vm.get();
    DeviceManager& dm = vm->devices_;

    // Legacy devices at their fixed ports and ISA IRQs: COM1, the i8042, the boot timer.
    vm->console_out_ = std::make_shared<ConsoleOutput>(io, std::move(console_fd));
    vm->serial_ = std::make_shared<Serial>(dm.irq_line(layout::IRQ_SERIAL),
                                           [out = vm->console_out_](std::span<const std::uint8_t> b) { return out->write(b) == b.size(); });
    if (cfg.console.serial_rate_limiter) vm->serial_->set_output_limit(*cfg.console.serial_rate_limiter);
    dm.attach_pio(layout::PORT_COM1, 8, vm->serial_, "serial");
    vm->i8042_ = std::make_shared<I8042>(dm.irq_line(layout::IRQ_I8042),
                                         [v] { v->request_exit(VmExitKind::GuestReset, "guest reset through the i8042"); });
    dm.attach_pio(layout::PORT_I8042_DATA, 5, vm->i8042_, "i8042");
    if (opts.boot_timer) dm.attach_mmio(layout::BOOT_TIMER, 0x1000, std::make_shared<BootTimer>(), "boot-timer");
    dm.add_metrics("uart", "", [s = vm->serial_] { return s->counters().values(); });
    // Ember's: the host end of the console (stdout or serial_out_path), shared by both consoles.
    dm.add_metrics("console_output", "", [o = vm->console_out_] { return o->metrics().values(); });

    // Virtio devices, each on the next slot: drives (root first), network interfaces, the console.
    for (auto& d : drives) {
        const std::string id = d.cfg.drive_id;
        dm.attach_virtio(std::make_shared<virtio::block::BlockDevice>(vm->mem_, io, d.cfg, std::move(d.fd), d.size), id, "block");
    }
    for (auto& [net_cfg, tap] : taps)
        dm.attach_virtio(std::make_shared<virtio::net::NetDevice>(vm->mem_, io, net_cfg, std::move(tap)), net_cfg.iface_id, "net");
    if (cfg.vsock) dm.attach_virtio(std::make_shared<virtio::vsock::VsockDevice>(vm->mem_, io, *cfg.vsock), "", "vsock");
    std::shared_ptr<virtio::console::ConsoleDevice> console;
    if (cfg.console.device == ConsoleDevice::Virtio) {
        console = std::make_shared<virtio::console::ConsoleDevice>(
            vm->mem_, vm->console_out_, console_on_stdout ? HostConsole::terminal_size() : std::nullopt);
        dm.attach_virtio(console, "", "virtio_console");
    }
    vm->host_console_ = std::make_unique<HostConsole>(io, *vm->serial_, console, console_on_stdout);
    // virtio-rng (Firecracker's attach_entropy_device), on the slot after the devices above.
    if (cfg.entropy) dm.attach_virtio(std::make_shared<virtio::rng::EntropyDevice>(vm->mem_, *cfg.entropy), "", "entropy");
    // virtio-balloon (Firecracker's attach_balloon_device), last.
    if (cfg.balloon) dm.attach_virtio(std::make_shared<virtio::balloon::BalloonDevice>(vm->mem_, io, *cfg.balloon), "", "balloon");

    std::string device_args = root_args(drives);
    if (!dm.kernel_args().empty()) device_args += (device_args.empty() ? "" : " ") + dm.kernel_args();
    const std::string cmdline = add_kernel_args(bs.boot_args.value_or(DEFAULT_BOOT_ARGS), device_args);
    write_boot_info(vm->mem_, kernel, cmdline, initrd);
    write_mptable(vm->mem_, m.vcpu_count);

    // KVM last.
    vm->kvm_.emplace(Kvm::open(opts.kvm_path, added_kvm_caps(cpu_template), removed_kvm_caps(cpu_template)));
    vm->vm_fd_.emplace(*vm->kvm_);
    vm->vm_fd_->setup_x86_platform(layout::KVM_IDENTITY_MAP, layout::KVM_TSS);
    vm->vm_fd_->register_memory(vm->mem_);
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

} // namespace ember
