#include "vmm/vm.hpp"

#include "vmm/base/irq.hpp"
#include "devices/legacy/boot_timer.hpp"
#include "devices/legacy/i8042.hpp"
#include "devices/legacy/serial.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/mmio.hpp"
#include "devices/virtio/net/device.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/arch/x86_64/mptable.hpp"
#include "vmm/arch/x86_64/x86_boot.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

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

// Puts a terminal on stdin into raw-ish mode (no echo, no line editing, no signals: Ctrl-C
// belongs to the guest) and always restores it.
class TerminalGuard {
public:
    TerminalGuard() {
        if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) != 0) return;
        termios raw = saved_;
        raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO | ISIG | IEXTEN);
        raw.c_iflag &= ~static_cast<tcflag_t>(ICRNL | IXON);
        raw.c_cc[VMIN] = 1;
        raw.c_cc[VTIME] = 0;
        active_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    ~TerminalGuard() {
        if (active_) ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
    TerminalGuard(const TerminalGuard&) = delete;
    TerminalGuard& operator=(const TerminalGuard&) = delete;

private:
    termios saved_{};
    bool active_ = false;
};

// The size of the terminal on stdout, for virtio-console's F_SIZE; none when stdout is not one.
std::optional<virtio::console::ConsoleSize> terminal_size() noexcept {
    winsize ws{};
    if (!::isatty(STDOUT_FILENO) || ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0) return std::nullopt;
    return virtio::console::ConsoleSize{ws.ws_col, ws.ws_row};
}

} // namespace

namespace {
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

PreparedGuest prepare_guest(const VmConfig& cfg) {
    if (!cfg.boot_source) throw ConfigError("no boot source: boot-source.kernel_image_path is required");
    const auto& m = cfg.machine;
    if (m.vcpu_count < 1 || m.vcpu_count > MAX_VCPUS)
        throw ConfigError("vcpu_count must be from 1 to " + std::to_string(MAX_VCPUS));
    if (m.mem_size_mib == 0) throw ConfigError("mem_size_mib must be at least 1");
    const auto& bs = *cfg.boot_source;
    std::vector<OpenedDrive> drives = open_drives(cfg.drives);
    auto nets = open_taps(cfg.net);
    const std::size_t consoles = cfg.console.device == ConsoleDevice::Virtio ? 1 : 0;
    if (drives.size() + nets.size() + consoles > max_virtio_devices())
        throw ConfigError("at most " + std::to_string(max_virtio_devices()) + " virtio devices fit the IRQ range");
    UniqueFd console_out = cfg.console.serial_out_path ? ConsoleOutput::open_path(*cfg.console.serial_out_path)
                                                       : ConsoleOutput::dup_stdout();
    GuestMemory mem = layout::guest_memory(m.mem_size_mib * layout::MiB);

    auto kernel_file = open_regular(bs.kernel_image_path, "kernel image");
    KernelImage kernel = load_kernel(kernel_file.fd.get(), kernel_file.size, bs.kernel_image_path, mem);
    std::optional<InitrdPlacement> initrd;
    if (bs.initrd_path) {
        auto f = open_regular(*bs.initrd_path, "initrd");
        initrd = load_initrd(f.fd.get(), f.size, *bs.initrd_path, kernel, mem);
    }
    // Devices are attached in this order by Vm::attach_virtio_devices(): drives, network
    // interfaces, the console.
    std::string device_args = root_args(drives);
    for (std::size_t i = 0; i < drives.size() + nets.size() + consoles; ++i) device_args += (device_args.empty() ? "" : " ") + virtio_mmio_arg(i);
    std::string cmdline = add_kernel_args(bs.boot_args.value_or(DEFAULT_BOOT_ARGS), device_args);
    write_boot_info(mem, kernel, cmdline, initrd);
    write_mptable(mem, m.vcpu_count);
    return PreparedGuest{std::move(mem), kernel, std::move(cmdline), m.vcpu_count, m.smt, std::move(drives), std::move(nets),
                         cfg.console.device, std::move(console_out), !cfg.console.serial_out_path};
}

struct Vm::StdinReader {
    StdinReader(boost::asio::io_context& io, int fd) : sd(io, fd), saved_flags(::fcntl(STDIN_FILENO, F_GETFL)) {}
    ~StdinReader() {
        boost::system::error_code ec;
        sd.close(ec);
        // O_NONBLOCK is shared with the parent shell's file description: put it back.
        if (saved_flags >= 0) ::fcntl(STDIN_FILENO, F_SETFL, saved_flags);
    }
    boost::asio::posix::stream_descriptor sd;
    int saved_flags;
    TerminalGuard term;
    std::array<std::uint8_t, 256> buf{};
    std::vector<std::uint8_t> pending;
};

Vm::Vm(boost::asio::io_context& io, Kvm kvm, PreparedGuest guest, ExitHandler on_exit)
    : kvm_(std::move(kvm)), vm_(kvm_), guest_(std::move(guest)), io_(io), on_exit_(std::move(on_exit)) {}

Vm::~Vm() {
    for (auto& v : vcpus_) v->request_stop();
    for (auto& v : vcpus_) v->join();
}

std::unique_ptr<Vm> Vm::create(boost::asio::io_context& io, PreparedGuest guest, const RunOptions& opts,
                               ExitHandler on_exit) {
    Kvm kvm = Kvm::open(opts.kvm_path);
    std::unique_ptr<Vm> vm(new Vm(io, std::move(kvm), std::move(guest), std::move(on_exit)));
    vm->vm_.setup_x86_platform(layout::KVM_IDENTITY_MAP, layout::KVM_TSS);
    vm->vm_.register_memory(vm->guest_.mem);
    vm->attach_legacy_devices(opts);
    vm->attach_virtio_devices();

    const auto cpuid = vm->kvm_.supported_cpuid();
    const CpuTopology topo{vm->guest_.vcpus, vm->guest_.smt};
    for (unsigned i = 0; i < vm->guest_.vcpus; ++i) {
        auto v = std::make_unique<Vcpu>(VcpuFd(vm->kvm_, vm->vm_, i), vm->pio_, vm->mmio_, *vm);
        v->configure(cpuid, topo, i == 0 ? &vm->guest_.kernel : nullptr);
        vm->vcpus_.push_back(std::move(v));
    }
    return vm;
}

void Vm::attach_legacy_devices(const RunOptions& opts) {
    // Fixed order: COM1, i8042, boot timer. Their IRQs are edge-triggered ISA pins fed by irqfds.
    serial_irq_ = std::make_unique<EventFdIrq>();
    vm_.register_irqfd(serial_irq_->fd(), layout::IRQ_SERIAL);
    console_out_ = std::make_shared<ConsoleOutput>(io_, std::move(guest_.console_out));
    serial_ = std::make_shared<Serial>(*serial_irq_, [out = console_out_](std::span<const std::uint8_t> b) { return out->write(b) == b.size(); });
    pio_.insert(layout::PORT_COM1, 8, serial_, "serial");

    kbd_irq_ = std::make_unique<EventFdIrq>();
    vm_.register_irqfd(kbd_irq_->fd(), layout::IRQ_I8042);
    i8042_ = std::make_shared<I8042>(*kbd_irq_, [this] { request_exit(VmExitKind::GuestReset, "guest reset through the i8042"); });
    pio_.insert(layout::PORT_I8042_DATA, 5, i8042_, "i8042");

    if (opts.boot_timer) {
        boot_timer_ = std::make_shared<BootTimer>();
        mmio_.insert(layout::BOOT_TIMER, 0x1000, boot_timer_, "boot-timer");
    }
}

void Vm::attach_virtio_devices() {
    // Fixed order, matching the virtio_mmio.device= arguments prepare_guest() wrote: drives,
    // then network interfaces.
    for (auto& d : guest_.drives) {
        auto blk = std::make_shared<virtio::block::BlockDevice>(guest_.mem, io_, d.cfg, std::move(d.fd), d.size);
        blocks_.push_back(blk);
        attach_virtio(blk);
    }
    for (auto& [cfg, tap] : guest_.nets) {
        auto net = std::make_shared<virtio::net::NetDevice>(guest_.mem, io_, cfg, std::move(tap));
        nets_.push_back(net);
        attach_virtio(net);
    }
    if (guest_.console == ConsoleDevice::Virtio) {
        console_dev_ = std::make_shared<virtio::console::ConsoleDevice>(
            guest_.mem, console_out_, guest_.console_on_stdout ? terminal_size() : std::nullopt);
        attach_virtio(console_dev_);
    }
}

void Vm::attach_virtio(std::shared_ptr<virtio::VirtioDevice> dev) {
    const std::size_t n = virtio_count_++;
    const std::uint64_t base = virtio_mmio_addr(n);
    vm_.register_irqfd(dev->irq_fd(), virtio_irq(n));
    for (std::size_t q = 0; q < dev->queues().size(); ++q)
        if (!dev->serve_on_vcpu(q)) vm_.register_ioeventfd(dev->notify_fd(q), base + virtio::mmio::QUEUE_NOTIFY, 4, false, q);
    auto transport = std::make_shared<virtio::MmioTransport>(dev, io_);
    mmio_.insert(base, layout::VIRTIO_MMIO_SLOT, std::move(transport), dev->name());
}

void Vm::start_stdin_reader() {
    int fd = ::dup(STDIN_FILENO);
    if (fd < 0) return;
    try {
        stdin_ = std::make_unique<StdinReader>(io_, fd);
    } catch (const std::exception& e) {
        // A regular file or /dev/null cannot be polled: the guest simply gets no console input.
        LOG_DEBUG("console input disabled: %s", e.what());
        return;
    }
    auto resume = [this] { boost::asio::post(io_, [this] { feed_console(); }); };
    if (console_dev_) console_dev_->set_rx_space_callback(resume);
    else serial_->set_rx_drained_callback(resume);
    read_stdin();
}

void Vm::read_stdin() {
    stdin_->sd.async_read_some(boost::asio::buffer(stdin_->buf), [this](const boost::system::error_code& ec, std::size_t n) {
        if (ec || n == 0) {
            if (ec != boost::asio::error::operation_aborted && ec != boost::asio::error::eof && ec)
                LOG_DEBUG("console input ended: %s", ec.message().c_str());
            return;
        }
        stdin_->pending.assign(stdin_->buf.begin(), stdin_->buf.begin() + static_cast<std::ptrdiff_t>(n));
        feed_console();
    });
}

void Vm::feed_console() {
    if (!stdin_ || stdin_->pending.empty()) return;
    std::size_t taken = 0;
    if (console_dev_) {
        std::lock_guard lk(console_dev_->mutex());
        taken = console_dev_->enqueue_input(stdin_->pending);
    } else {
        taken = serial_->enqueue_input(stdin_->pending);
    }
    stdin_->pending.erase(stdin_->pending.begin(), stdin_->pending.begin() + static_cast<std::ptrdiff_t>(taken));
    // Back-pressure: with bytes left over, wait for the guest to take them before reading more.
    if (stdin_->pending.empty()) read_stdin();
}

void Vm::watch_terminal_size() {
    if (!console_dev_ || !guest_.console_on_stdout || !terminal_size()) return;
    winch_ = std::make_unique<boost::asio::signal_set>(io_, SIGWINCH);
    winch_->async_wait([this](const boost::system::error_code& ec, int) {
        if (ec) return;
        if (auto sz = terminal_size()) {
            std::lock_guard lk(console_dev_->mutex());
            console_dev_->resize(*sz);
        }
        watch_terminal_size();
    });
}

void Vm::start() {
    start_stdin_reader();
    watch_terminal_size();
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
            stdin_.reset();
            winch_.reset();
            // The guest's last lines (its exit status, for one) must reach the host.
            console_out_->drain(std::chrono::seconds(2));
            LOG_INFO("unclaimed accesses: PIO %llu reads %llu writes, MMIO %llu reads %llu writes",
                     static_cast<unsigned long long>(pio_.unclaimed_reads()),
                     static_cast<unsigned long long>(pio_.unclaimed_writes()),
                     static_cast<unsigned long long>(mmio_.unclaimed_reads()),
                     static_cast<unsigned long long>(mmio_.unclaimed_writes()));
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
