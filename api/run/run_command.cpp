#include "api/run/run_command.hpp"

#include "api/config.hpp"
#include "api/controller.hpp"
#include "api/run/disk_layer.hpp"
#include "api/run/initramfs.hpp"
#include "api/run/passt.hpp"
#include "api/run/run_proto.h"
#include "api/run/session.hpp"
#include "vmm/base/crc64.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/snapshot_file.hpp"
#include "vmm/vm.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <span>
#include <fstream>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#ifndef EMBER_SOURCE_DIR
#define EMBER_SOURCE_DIR ""
#endif

namespace ember::run {
namespace {

namespace fs = std::filesystem;

int fail(int status, const std::string& msg) {
    std::fprintf(stderr, "ember: %s\n", msg.c_str());
    return status;
}

// A private directory for the run's sockets, console log and disk layers; removed at the end.
class TempDir {
public:
    TempDir() {
        const char* base = std::getenv("TMPDIR");
        std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ember-run-XXXXXX";
        if (!::mkdtemp(tmpl.data())) throw_errno("cannot create a directory from " + tmpl);
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const noexcept { return path_; }

private:
    std::string path_;
};

// The host terminal in raw mode for a -it run (the guest's pty does the line editing); restored
// on every way out.
class RawTerminal {
public:
    explicit RawTerminal(int fd) : fd_(fd) {
        if (::tcgetattr(fd_, &saved_) != 0) {
            fd_ = -1;
            return;
        }
        termios raw = saved_;
        ::cfmakeraw(&raw);
        ::tcsetattr(fd_, TCSANOW, &raw);
    }
    ~RawTerminal() {
        if (fd_ >= 0) ::tcsetattr(fd_, TCSANOW, &saved_);
    }
    RawTerminal(const RawTerminal&) = delete;
    RawTerminal& operator=(const RawTerminal&) = delete;

private:
    int fd_;
    termios saved_{};
};

// Runs one of the project's artefact scripts (guest-kernels/build, scripts/mkrootfs), which print
// the cache directory on stdout and their progress on stderr. Progress is passed on; the cache
// hit notice is not (it would land in every run's stderr).
std::string artefact_dir(const std::string& script, const char* what) {
    const std::string path = std::string(EMBER_SOURCE_DIR) + "/" + script;
    if (std::string(EMBER_SOURCE_DIR).empty() || ::access(path.c_str(), X_OK) != 0)
        throw ConfigError(std::string("no ") + what + " given and " + path + " is not there to build the default one");
    FILE* p = ::popen(("'" + path + "' 2>&1").c_str(), "r");
    if (!p) throw_errno("cannot run " + path);
    std::string dir;
    char line[4096];
    while (std::fgets(line, sizeof line, p)) {
        std::string l(line);
        while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
        std::error_code ec;
        if (!l.empty() && l[0] == '/' && fs::is_directory(l, ec)) dir = l;
        else if (l.find("cache hit") == std::string::npos) std::fprintf(stderr, "ember: %s\n", l.c_str());
    }
    const int st = ::pclose(p);
    if (st != 0 || dir.empty()) throw ConfigError(path + " failed to build the default " + what);
    return dir;
}

std::string default_file(const char* env, const std::string& script, const char* file, const char* what) {
    const char* dir = std::getenv(env);
    const std::string d = dir && *dir ? std::string(dir) : artefact_dir(script, what);
    return d + "/" + file;
}

std::vector<std::uint8_t> read_whole(const std::string& path, const char* what) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw ConfigError(std::string("cannot read ") + what + " " + path + ": " + std::strerror(errno));
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The initrd as a memfd: the caller's initrd (if any) followed by the agent's archive. The kernel
// unpacks concatenated archives in order, so the agent's /init wins (buffer-format.rst).
UniqueFd initrd_memfd(const std::optional<std::string>& user_initrd) {
    UniqueFd fd(::memfd_create("ember-run-initrd", MFD_CLOEXEC));
    if (!fd.valid()) throw_errno("memfd_create");
    std::vector<std::uint8_t> data;
    if (user_initrd) {
        data = read_whole(*user_initrd, "--initrd");
        while (data.size() % 4 != 0) data.push_back(0);
    }
    const auto agent = agent_initramfs(agent_binary());
    data.insert(data.end(), agent.begin(), agent.end());
    std::size_t off = 0;
    while (off < data.size()) {
        const ssize_t w = ::write(fd.get(), data.data() + off, data.size() - off);
        if (w <= 0) throw_errno("writing the initrd");
        off += static_cast<std::size_t>(w);
    }
    return fd;
}

std::string tail_of(const std::string& path, std::size_t lines) {
    std::ifstream f(path, std::ios::binary);
    std::vector<std::string> all;
    for (std::string l; std::getline(f, l);) all.push_back(l);
    std::string out;
    for (std::size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) out += "  " + all[i] + "\n";
    return out;
}

// Why the guest died, from its console: the kernel's panic line, else the agent's last message.
std::string guest_death(const std::string& console_log) {
    std::ifstream f(console_log, std::ios::binary);
    std::string panic, agent;
    for (std::string l; std::getline(f, l);) {
        while (!l.empty() && (l.back() == '\r' || l.back() == '\n')) l.pop_back();
        if (auto at = l.find("Kernel panic"); at != std::string::npos && panic.empty()) panic = l.substr(at);
        if (auto at = l.find("ember-agent: "); at != std::string::npos) agent = l.substr(at + 13);
    }
    if (!panic.empty()) return "the guest kernel panicked: " + panic;
    if (!agent.empty()) return "the guest agent failed: " + agent;
    return {};
}

std::optional<std::pair<std::uint16_t, std::uint16_t>> terminal_size() {
    winsize ws{};
    for (int fd : {STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO})
        if (::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0) return std::pair{ws.ws_row, ws.ws_col};
    return std::nullopt;
}

// What a cached warm snapshot depends on: a file by path, size and modification time.
std::string identity(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw_errno("stat " + path);
    std::error_code ec;
    const auto canon = fs::weakly_canonical(path, ec);
    return (ec ? path : canon.string()) + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec);
}

std::string warm_root() {
    const char* c = std::getenv("EMBER_CACHE");
    const char* h = std::getenv("HOME");
    return (c && *c ? std::string(c) : std::string(h && *h ? h : "/tmp") + "/.cache/ember") + "/run-warm";
}

// Pauses the VM, writes its snapshot and the root disk as it is now into a new cache entry, and
// resumes it. The entry appears whole (a rename) or not at all; a failure only costs the cache.
void create_warm(api::Controller& ctl, const DiskLayer& root, const std::string& entry) {
    fs::create_directories(fs::path(entry).parent_path());
    std::string tmpl = entry + ".tmp-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw_errno("mkdtemp " + tmpl);
    const std::string tmp = tmpl;
    auto check = [](const api::Response& r, const char* what) {
        if (r.status >= 300) throw ConfigError(std::string(what) + ": " + r.body);
    };
    std::string error;
    try {
        check(ctl.handle(api::PatchVmState{true}), "pause");
        try {
            check(ctl.handle(api::CreateSnapshot{{tmp + "/state", tmp + "/memory", false}}), "snapshot");
            root.export_to(tmp + "/disk");
        } catch (const std::exception& e) {
            error = e.what();
        }
        check(ctl.handle(api::PatchVmState{false}), "resume");
    } catch (const std::exception& e) {
        error = e.what();
    }
    std::error_code ec;
    if (error.empty() && ::rename(tmp.c_str(), entry.c_str()) == 0) return;
    fs::remove_all(tmp, ec);
    if (!error.empty()) LOG_WARN("ember run --warm: no snapshot cached: %s", error.c_str());
}

std::string seconds(double s) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", s);
    return b;
}

} // namespace

int run_command(const RunArgs& args) {
    if (args.command.empty()) return fail(kStatusEmberFailed, "run: no command given (ember run [OPTIONS] -- COMMAND [ARG...])");
    std::optional<TempDir> tmp;
    VmConfig vm;
    CommandSpec spec;
    std::vector<DiskLayer> layers; // index 0: the root image's, when there is one
    bool rootfs_given = false;
    std::string warm_entry;
    bool warm_hit = false;
    UniqueFd initrd;
    std::optional<Passt> passt; // outlives the VM: see the teardown below
    try {
        tmp.emplace();
        // EMBER_RUN_LOG=FILE keeps Ember's log (at Info, with phase timings) where it can be read.
        const char* keep_log = std::getenv("EMBER_RUN_LOG");
        log::configure({"ember-run", keep_log && *keep_log ? log::Level::Info : log::Level::Warning, true, false,
                        keep_log && *keep_log ? std::string(keep_log) : tmp->path() + "/ember.log", ""});
        LOG_INFO("ember run: start");
        spec.argv = args.command;
        for (const auto& e : args.env) {
            if (e.find('=') != std::string::npos) {
                spec.env.push_back(e);
            } else if (const char* v = std::getenv(e.c_str())) {
                spec.env.push_back(e + "=" + v); // docker run -e VAR: the host's value, if it has one
            }
        }
        spec.cwd = args.workdir;
        spec.tty = args.tty;
        spec.interactive = args.interactive;
        if (args.tty)
            if (auto sz = terminal_size()) std::tie(spec.rows, spec.cols) = *sz;
        (void)encode_exec_frames(spec);

        BootSourceConfig boot;
        boot.kernel_image_path = args.kernel ? *args.kernel : default_file("EMBER_KERNEL_DIR", "guest-kernels/build", "vmlinux", "kernel");
        std::string cmdline = "console=ttyS0 quiet loglevel=1 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp "
                              "i8042.dumbkbd";
        std::optional<std::string> rootfs = args.rootfs;
        if (!rootfs && !args.initrd) rootfs = default_file("EMBER_ROOTFS_DIR", "scripts/mkrootfs", "rootfs.ext4", "root image");
        std::vector<std::pair<std::string, bool>> disks; // path, read-only
        rootfs_given = rootfs.has_value();
        if (rootfs) disks.emplace_back(*rootfs, false);
        for (const auto& d : args.drives) {
            const bool ro = d.size() > 3 && d.compare(d.size() - 3, 3, ":ro") == 0;
            disks.emplace_back(ro ? d.substr(0, d.size() - 3) : d, ro);
        }
        if (disks.size() > 20) throw ConfigError("at most 20 disks");
        for (const auto& [path, ro] : disks)
            if (::access(path.c_str(), R_OK) != 0)
                throw ConfigError("cannot read disk image " + path + ": " + std::strerror(errno));
        if (args.warm) {
            if (args.net) throw ConfigError("--warm with --net is not supported yet");
            std::string k = std::string(EMBER_VERSION) + "|" + std::to_string(crc64(0, std::as_bytes(agent_binary()))) + "|" +
                            identity(boot.kernel_image_path) + "|" + (args.initrd ? identity(*args.initrd) : "") + "|" +
                            std::to_string(args.cpus) + "|" + std::to_string(args.mem_mib) + "|" + cmdline;
            for (const auto& [path, ro] : disks) k += "|" + identity(path) + (ro ? ":ro" : ":rw");
            char hex[17];
            std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(crc64(0, std::as_bytes(std::span<const char>(k)))));
            warm_entry = warm_root() + "/" + hex;
            warm_hit = rootfs.has_value() && ::access((warm_entry + "/state").c_str(), R_OK) == 0;
            if (warm_hit) {
                // A damaged entry is only a cache miss: it is removed, and this run boots and
                // caches a new one. (Checked before the disks are layered on its copy.)
                try {
                    (void)read_snapshot_file(warm_entry + "/state");
                    for (const char* f : {"/memory", "/disk"})
                        if (::access((warm_entry + f).c_str(), R_OK) != 0) throw ConfigError(std::string(f + 1) + " file missing");
                } catch (const std::exception& e) {
                    LOG_WARN("ember run --warm: the cached snapshot %s is damaged (%s): removed; booting", warm_entry.c_str(), e.what());
                    std::error_code ec;
                    fs::remove_all(warm_entry, ec);
                    warm_hit = false;
                }
            }
        }
        for (std::size_t i = 0; i < disks.size(); ++i) {
            auto [path, ro] = disks[i];
            if (i == 0 && warm_hit) path = warm_entry + "/disk"; // the root disk as the snapshot left it
            DriveConfig dc;
            dc.drive_id = i == 0 && rootfs ? "rootfs" : "drive" + std::to_string(i);
            dc.is_read_only = ro;
            if (ro) {
                dc.path_on_host = path;
            } else {
                // --warm's first run snapshots the VM: its root disk must be a file.
                layers.push_back(DiskLayer::create(path, tmp->path(), args.warm && !warm_hit && i == 0 && rootfs.has_value()));
                layers.back().configure(dc);
                LOG_INFO("ember run: %s as a %s", path.c_str(), layers.back().kind());
            }
            vm.drives.push_back(std::move(dc));
        }
        if (!warm_hit) { // a restored VM already holds its initrd
            initrd = initrd_memfd(args.initrd);
            boot.initrd_path = "/proc/self/fd/" + std::to_string(initrd.get());
        }
        if (rootfs) cmdline += " ember.root=/dev/vda";
        if (args.net && args.net->empty()) cmdline += " " + Passt::guest_cmdline();
        boot.boot_args = cmdline;
        vm.boot_source = boot;
        vm.machine.vcpu_count = args.cpus;
        vm.machine.mem_size_mib = args.mem_mib;
        vm.console.serial_out_path = tmp->path() + "/console.log";
        vm.vsock = VsockConfig{std::nullopt, 3, tmp->path() + "/v.sock"};
        if (args.net) {
            NetConfig nc{"eth0", args.net->empty() ? "passt" : *args.net, std::nullopt, std::nullopt, std::nullopt, std::nullopt};
            if (args.net->empty()) {
                // With EMBER_RUN_LOG=FILE, passt's own log (not quiet) is kept as FILE.passt.
                passt.emplace(keep_log && *keep_log ? std::string(keep_log) + ".passt" : tmp->path() + "/passt.log", keep_log && *keep_log);
                nc.passt_socket = passt->socket();
                LOG_INFO("ember run: passt started");
            }
            vm.net.push_back(std::move(nc));
        }
    } catch (const std::exception& e) {
        return fail(kStatusEmberFailed, e.what());
    }

    boost::asio::io_context io(1);
    RunOptions opts;
    opts.kvm_path = args.kvm_path;
    opts.console_input = false;
    bool vm_ended = false, timed_out = false;
    int vm_status = 0, interrupted_by = 0;
    std::string vm_detail;
    std::optional<api::Controller> ctl;
    std::optional<Session> session;
    std::optional<RawTerminal> raw;
    try {
        session.emplace(vm.vsock->uds_path + "_" + std::to_string(ERP_VSOCK_PORT), spec, STDIN_FILENO, STDOUT_FILENO,
                        STDERR_FILENO);
        ctl.emplace(io, "ember-run", opts, host_memory_mib(), [&](int s, const std::string& d) {
            vm_ended = true;
            vm_status = s;
            vm_detail = d;
            io.stop();
        });
        // The agent has synced the disks before it sends EXIT (run_proto.h, SEQUENCE): the VM can
        // stop at once instead of waiting for the guest's reboot.
        if (args.warm && !warm_hit && rootfs_given)
            session->hold_at_ready([&] {
                boost::asio::post(io, [&] {
                    create_warm(*ctl, layers.front(), warm_entry);
                    session->release();
                });
            });
        session->start([&] {
            boost::asio::post(io, [&] {
                if (ctl->vm()) ctl->vm()->request_exit(VmExitKind::HostRequest, "the command ended");
            });
        });
        if (warm_hit) {
            // The agent's old connection is reset by the restore (TRANSPORT_RESET); it connects
            // again, to this run's listener.
            (void)ctl->handle(api::PutSerial{vm.console.serial_out_path, std::nullopt});
            SnapshotLoadParams p;
            p.snapshot_path = warm_entry + "/state";
            p.backend_path = warm_entry + "/memory";
            p.resume_vm = true;
            p.vsock_uds_path = vm.vsock->uds_path;
            for (const auto& d : vm.drives) p.drive_overrides.push_back({d.drive_id, d.path_on_host, d.cow});
            const auto r = ctl->handle(api::LoadSnapshot{p});
            if (r.status >= 300) {
                std::error_code ec;
                fs::remove_all(warm_entry, ec); // only a cache: the next --warm run makes a new one
                throw ConfigError("--warm: the cached snapshot " + warm_entry + " could not be loaded and was removed: " + r.body);
            }
        } else {
            ConfigFile doc;
            doc.vm = vm;
            ctl->boot_from_config(doc);
        }
    } catch (const std::exception& e) {
        return fail(kStatusEmberFailed, e.what());
    }
    LOG_INFO("ember run: VM %s", warm_hit ? "restored" : "booting");
    if (args.tty && args.interactive && ::isatty(STDIN_FILENO)) raw.emplace(STDIN_FILENO);

    // SIGINT/SIGTERM/SIGHUP go to the command (its process group, or the tty's foreground group);
    // before the command runs, or at the third one, they end the VM with 128+N.
    boost::asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
    int signal_count = 0;
    std::function<void(const boost::system::error_code&, int)> on_signal = [&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        if (++signal_count >= 3 || !session->send_signal(sig)) {
            interrupted_by = sig;
            if (ctl->vm()) ctl->vm()->request_exit(VmExitKind::HostRequest, std::string("received ") + strsignal(sig));
        }
        signals.async_wait(on_signal);
    };
    signals.async_wait(on_signal);
    boost::asio::signal_set winch(io, SIGWINCH);
    std::function<void(const boost::system::error_code&, int)> on_winch = [&](const boost::system::error_code& ec, int) {
        if (ec) return;
        if (auto sz = terminal_size()) session->send_winsize(sz->first, sz->second);
        winch.async_wait(on_winch);
    };
    if (args.tty) winch.async_wait(on_winch);
    boost::asio::steady_timer timer(io);
    if (args.timeout_s > 0) {
        timer.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(args.timeout_s)));
        timer.async_wait([&](const boost::system::error_code& ec) {
            if (ec) return;
            timed_out = true;
            if (ctl->vm()) ctl->vm()->request_exit(VmExitKind::HostRequest, "--timeout");
        });
    }
    // passt ending while the VM runs (it refuses a host without a usable interface at start)
    // ends the run: the command would only see a dead link.
    bool passt_died = false;
    std::optional<boost::asio::posix::stream_descriptor> passt_watch;
    if (const int pfd = passt ? ::fcntl(passt->pidfd(), F_DUPFD_CLOEXEC, 0) : -1; pfd >= 0) {
        passt_watch.emplace(io, pfd);
        passt_watch->async_wait(boost::asio::posix::stream_descriptor::wait_read, [&](const boost::system::error_code& ec) {
            if (ec) return;
            passt_died = true;
            if (ctl->vm()) ctl->vm()->request_exit(VmExitKind::HostRequest, "passt ended");
        });
    }
    if (!vm_ended) io.run();
    LOG_INFO("ember run: VM ended");
    session->stop();
    ctl.reset();
    LOG_INFO("ember run: VM torn down");
    raw.reset();
    const Outcome out = session->outcome();
    session.reset();

    if (timed_out) return fail(kStatusTimeout, "the command did not end within --timeout " + seconds(args.timeout_s) + " s; the VM was stopped");
    if (out.kind == Outcome::Kind::Exited || out.kind == Outcome::Kind::Signalled) {
        if (args.keep_disk) {
            if (layers.empty() || !rootfs_given) return fail(kStatusEmberFailed, "--keep-disk: there is no root disk");
            try {
                layers.front().export_to(*args.keep_disk);
            } catch (const std::exception& e) {
                return fail(kStatusEmberFailed, std::string("--keep-disk: ") + e.what());
            }
        }
        return out.kind == Outcome::Kind::Exited ? static_cast<int>(out.value) : 128 + static_cast<int>(out.value);
    }
    if (out.kind == Outcome::Kind::StartFailed)
        return fail(out.value == ENOENT ? kStatusNotFound : kStatusCannotExecute, out.text);
    if (passt_died) return fail(kStatusEmberFailed, "--net: " + passt->failure());
    if (interrupted_by != 0) return 128 + interrupted_by;
    if (vm_ended && vm_status != 0) {
        const std::string log_tail = tail_of(tmp->path() + "/ember.log", 5);
        return fail(kStatusEmberFailed, "the VM failed: " + vm_detail + (log_tail.empty() ? "" : "\n" + log_tail));
    }
    const std::string why = guest_death(tmp->path() + "/console.log");
    return fail(kStatusGuestFailed, why.empty() ? "the guest ended before the command's exit status" + (out.text.empty() ? std::string() : " (" + out.text + ")") : why);
}

} // namespace ember::run
