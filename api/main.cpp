// ember: command-line entry point. Takes every flag of Firecracker 1.16, with its meaning.

#include "api/config.hpp"
#include "api/controller.hpp"
#include "api/http_server.hpp"
#include "api/run/run_command.hpp"
#include "api/uffd_handler.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/base/sparse_file.hpp"
#include "vmm/snapshot_file.hpp"
#include "vmm/vm.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <pthread.h>
#include <unistd.h>
#include <sstream>
#include <vector>


namespace {

// Firecracker's exit codes (src/firecracker/src/main.rs FcExitCode) where they apply.
constexpr int EXIT_GENERIC = 1;
constexpr int EXIT_BAD_CONFIGURATION = 152;
constexpr int EXIT_ARG_PARSING = 153;

int fail(int code, const std::string& msg) {
    std::fprintf(stderr, "ember: error: %s\n", msg.c_str());
    return code;
}

bool valid_instance_id(const std::string& id) {
    if (id.empty() || id.size() > 64) return false;
    for (char c : id)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    return true;
}

std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw ember::ConfigError("cannot read config file " + path + ": " + std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

// Firecracker's ProcessTimeReporter. A launcher (Firecracker's jailer) passes when it started, on
// CLOCK_MONOTONIC and on the process CPU clock (which exec keeps), and the CPU time its own parent
// used; the start-up metrics then cover the launcher too. Without them Ember measures from its
// own start (Firecracker reports 0).
struct StartTimes {
    std::optional<std::uint64_t> start_us, start_cpu_us, parent_cpu_us;

    std::uint64_t wall_us() const noexcept {
        if (!start_us) return ember::log::us_since_start();
        const std::uint64_t now = ember::log::monotonic_us();
        return now > *start_us ? now - *start_us : 0;
    }
    // --parent-cpu-time-us counts only with --start-time-cpu-us, as in Firecracker.
    std::uint64_t cpu_us() const noexcept {
        const std::uint64_t now = ember::log::process_cpu_us();
        if (!start_cpu_us) return now;
        return (now > *start_cpu_us ? now - *start_cpu_us : 0) + parent_cpu_us.value_or(0);
    }
};

struct Settings {
    bool serve_api = true;
    std::string sock;
    std::size_t max_payload = 0;
    std::string config_file;
    std::string metrics_path;
    std::string id;
    StartTimes start;
    ember::RunOptions opts;
};

// The VMM thread (this one) runs the controller's event loop. With the API, the API thread
// serves HTTP and posts each parsed request here; without it (--no-api), the config file is all
// there is. Ember exits when the guest ends or on SIGTERM/SIGINT/SIGHUP.
int run(const Settings& set) {
    namespace api = ember::api;
    LOG_INFO("Running Ember v%s", EMBER_VERSION);
    std::optional<ember::ConfigFile> initial;
    if (!set.config_file.empty()) {
        try {
            initial = ember::parse_config_document(read_file(set.config_file), ember::host_memory_mib());
        } catch (const std::exception& e) {
            return fail(EXIT_BAD_CONFIGURATION, e.what());
        }
    }
    auto io = std::make_unique<boost::asio::io_context>(1);
    int status = 0;
    std::string detail;
    auto controller = std::make_unique<api::Controller>(*io, set.id, set.opts, ember::host_memory_mib(), [&](int s, const std::string& d) {
        status = s;
        detail = d;
        io->stop();
    });
    api::Controller* ctl = controller.get();
    if (!set.metrics_path.empty()) try {
        ctl->init_metrics(set.metrics_path);
    } catch (const std::exception& e) {
        return fail(EXIT_GENERIC, e.what());
    }
    boost::asio::io_context* vmm_io = io.get();
    // Signals are handled before the socket exists: a client that sees the socket accept may
    // send SIGTERM at once, and that must end Ember cleanly, not kill it.
    auto signals = std::make_unique<boost::asio::signal_set>(*io, SIGINT, SIGTERM, SIGHUP);
    signals->async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        const std::string why = std::string("received ") + strsignal(sig);
        if (ctl->vm()) {
            ctl->vm()->request_exit(ember::VmExitKind::HostRequest, why);
        } else {
            (void)ctl->write_metrics(); // a last line, as when a VM ends (FlushMetrics is refused before boot)
            io->stop();
        }
    });
    api::HttpLimits limits;
    limits.max_body = set.max_payload;
    std::unique_ptr<api::HttpServer> server;
    if (set.serve_api) try {
        server = std::make_unique<api::HttpServer>(set.sock, limits, [ctl, vmm_io](api::HttpRequest req, api::HttpServer::Reply reply) {
            auto parsed = api::route(req.method, req.target, req.body);
            boost::asio::post(*vmm_io, [ctl, parsed = std::move(parsed), req = std::move(req), reply = std::move(reply)] {
                if (auto* r = std::get_if<api::Response>(&parsed)) {
                    ctl->count_rejected(req.method, req.target);
                    LOG_INFO("API: %s %s -> %u", req.method.c_str(), req.target.c_str(), r->status);
                    reply(*r);
                    return;
                }
                api::Response r;
                try {
                    r = ctl->handle(std::get<api::Action>(parsed));
                } catch (const std::exception& e) {
                    r = api::Response::internal_error(std::string("internal error: ") + e.what());
                }
                LOG_INFO("API: %s %s -> %u", req.method.c_str(), req.target.c_str(), r.status);
                reply(std::move(r));
            });
        });
    } catch (const std::exception& e) {
        return fail(EXIT_GENERIC, e.what());
    }
    if (initial) {
        try {
            ctl->boot_from_config(*initial);
        } catch (const std::exception& e) {
            return fail(EXIT_BAD_CONFIGURATION, e.what());
        }
    }
    {
        // The work guard lives in this scope, so it is gone before the io_context is destroyed.
        auto guard = boost::asio::make_work_guard(*io);
        if (server) {
            server->start();
            ctl->set_startup_time(set.start.wall_us(), set.start.cpu_us());
            LOG_INFO("API server listening on %s", set.sock.c_str());
        }
        io->run();
    }
    // Teardown order: stop serving, end the VM, then drop queued work that may still refer to
    // sessions of the (already stopped) server.
    if (server) server->stop();
    controller.reset();
    signals.reset();
    io.reset();
    server.reset();
    if (status != 0) return fail(status, detail);
    return 0;
}

} // namespace

int main(int argc, char** argv) {
    // `ember uffd-handler ...`: the page-fault handler for Uffd snapshot loads, not a VMM.
    if (argc >= 2 && std::strcmp(argv[1], "uffd-handler") == 0) return ember::uffd_handler_main(argc - 1, argv + 1);
    ember::log::mark_process_start();
    pthread_setname_np(pthread_self(), "ember_vmm");
    std::signal(SIGPIPE, SIG_IGN);

    // Every flag of Firecracker 1.16, with its meaning where Ember has the feature; the others
    // are accepted by the parser and refused below with what is missing.
    CLI::App app{"Ember: a KVM microVM monitor that speaks Firecracker's API and config format.", "ember"};
    Settings set;
    set.id = "anonymous-instance";
    set.sock = "/run/ember.socket";
    set.max_payload = 51200;
    std::string log_path, level = "Warning", module, seccomp_filter, later_value;
    std::uint64_t start_us = 0, start_cpu_us = 0, parent_cpu_us = 0, mmds_limit = 0;
    bool no_api = false, no_seccomp = false, version = false, show_level = false, show_origin = false, later_flag = false;
    app.add_option("--api-sock", set.sock, "Unix socket for the REST API (default /run/ember.socket)");
    app.add_option("--id", set.id, "MicroVM id, in GET / and log lines (1-64 characters: letters, digits, '-')");
    app.add_option("--config-file", set.config_file, "Firecracker-format JSON file describing the microVM; it boots at once");
    app.add_flag("--no-api", no_api, "Run only from --config-file, without the API socket");
    auto* filter_opt = app.add_option("--seccomp-filter", seccomp_filter,
                                      "Custom seccomp filter file: checked readable and recorded; Ember installs no seccomp filters yet");
    auto* no_seccomp_opt = app.add_flag("--no-seccomp", no_seccomp, "Run without seccomp filters (Ember installs none yet in any case)");
    filter_opt->excludes(no_seccomp_opt);
    no_seccomp_opt->excludes(filter_opt);
    // Digits only: strtoull would wrap a negative number around; Firecracker's u64 parse refuses it.
    const CLI::Validator kUnsigned(
        [](std::string& v) -> std::string {
            if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
                return "expected a non-negative integer, not \"" + v + "\"";
            errno = 0;
            (void)std::strtoull(v.c_str(), nullptr, 10);
            if (errno == ERANGE) return "\"" + v + "\" is out of range";
            return {};
        },
        "");
    auto* start_opt = app.add_option("--start-time-us", start_us,
                                     "Launcher's start, CLOCK_MONOTONIC microseconds: process_startup_time_us counts from it")
                         ->check(kUnsigned);
    auto* start_cpu_opt = app.add_option("--start-time-cpu-us", start_cpu_us,
                                         "Process CPU clock at the launcher's start, microseconds: process_startup_time_cpu_us counts from it")
                             ->check(kUnsigned);
    auto* parent_cpu_opt = app.add_option("--parent-cpu-time-us", parent_cpu_us,
                                          "CPU time of the launcher's parent, microseconds: added to process_startup_time_cpu_us (with --start-time-cpu-us)")
                              ->check(kUnsigned);
    app.add_option("--log-path", log_path, "Write log lines to this file or named pipe (no reader needed yet) instead of stderr");
    app.add_option("--level", level, "Log level: Off, Error, Warning (or Warn), Info, Debug, Trace; any letter case");
    app.add_option("--module", module,
                   "Log only lines from Ember source files whose path starts with this (e.g. api/, vmm/, devices/virtio/); "
                   "Firecracker's Rust module names match nothing");
    app.add_flag("--show-level", show_level, "Include the level in log lines");
    app.add_flag("--show-log-origin", show_origin, "Include file:line in log lines");
    app.add_option("--metrics-path", set.metrics_path,
                   "Write metrics to this file or named pipe (no reader needed yet) from the start, as PUT /metrics");
    app.add_flag("--boot-timer", set.opts.boot_timer, "Log Guest-boot-time when the guest writes 123 to MMIO 0xC0000000");
    app.add_option("--http-api-max-payload-size", set.max_payload, "Largest API request body in bytes (default 51200)")
        ->check(kUnsigned);
    app.add_flag("--version", version, "Print the version and exit");
    // Accepted so that they are refused with a reason, not as unknown.
    auto* metadata_opt = app.add_option("--metadata", later_value, "MMDS content file: not supported yet (no MMDS)");
    auto* mmds_opt = app.add_option("--mmds-size-limit", mmds_limit, "MMDS data store limit: not supported yet (no MMDS)")
                         ->check(kUnsigned);
    bool snapshot_version = false;
    std::string describe_snapshot;
    app.add_flag("--snapshot-version", snapshot_version, "Print the snapshot format version this Ember writes and exit");
    app.add_option("--describe-snapshot", describe_snapshot, "Print the format version of a snapshot file and exit");
    auto* pci_opt = app.add_flag("--enable-pci", later_flag, "PCIe transport: not supported yet (virtio-mmio only)");
    // Firecracker's rebase-snap (deprecated in 1.16) / `snapshot-editor edit-memory rebase`.
    std::string merge_base, merge_out;
    std::vector<std::string> merge_diffs;
    // `ember run [OPTIONS] -- COMMAND [ARG...]` (api/run/run_command.hpp has the exit statuses).
    ember::run::RunArgs run_args;
    std::optional<std::vector<std::string>> run_dashdash;
    std::string run_kernel, run_initrd, run_rootfs, run_net, run_keep;
    auto* run_cmd = app.add_subcommand("run", "Run COMMAND in a throwaway microVM and exit with its status "
                                              "(123: the guest died, 124: --timeout, 125: Ember failed, 126/127: cannot run COMMAND)");
    // Everything from COMMAND on is the guest's argv, options included (CLI11's prefix command).
    run_cmd->prefix_command();
    run_cmd->allow_extras();
    auto* run_kernel_opt = run_cmd->add_option("--kernel", run_kernel, "Guest kernel (default: the one guest-kernels/build caches)");
    auto* run_initrd_opt = run_cmd->add_option("--initrd", run_initrd, "Initramfs to run COMMAND from (the agent is added to it); no default root disk then");
    auto* run_rootfs_opt = run_cmd->add_option("--rootfs", run_rootfs, "ext4 root image (default: the project's busybox rootfs); never modified");
    run_cmd->add_option("--drive", run_args.drives, "Another disk, IMG or IMG:ro (/dev/vdb, ...); never modified")->allow_extra_args(false);
    run_cmd->add_option("--cpus", run_args.cpus, "vCPUs (default 1)")->check(CLI::Range(1u, 32u));
    run_cmd->add_option("--mem", run_args.mem_mib, "Guest memory in MiB (default 256)")->check(CLI::Range(16ull, 1048576ull));
    auto* run_net_opt = run_cmd->add_option("--net", run_net, "Give the guest network: through passt (no TAP, no root), or attached to this existing TAP")
                                ->expected(0, 1)
                                ->allow_extra_args(false);
    run_cmd->add_option("-e,--env", run_args.env, "VAR=VALUE (or VAR: Ember's own value) in the command's environment")->allow_extra_args(false);
    run_cmd->add_option("-w,--workdir", run_args.workdir, "The command's working directory in the guest");
    run_cmd->add_option("--timeout", run_args.timeout_s, "Stop the VM after this many seconds (status 124)")->check(CLI::PositiveNumber);
    auto* run_keep_opt = run_cmd->add_option("--keep-disk", run_keep, "Write the root disk as the command left it to this file");
    run_cmd->add_flag("--warm", run_args.warm, "Start from a snapshot taken at agent-ready by the first --warm run with the same kernel, disks, vCPUs and memory");
    run_cmd->add_flag("-i,--interactive", run_args.interactive, "Pass Ember's stdin to the command (otherwise it reads an empty stdin)");
    run_cmd->add_flag("-t,--tty", run_args.tty, "Give the command a terminal (the host terminal's size; -it for an interactive shell)");
    auto* merge_cmd = app.add_subcommand("snapshot-merge",
                                         "Merge Diff snapshot memory files onto their base memory file (in creation order) and exit");
    merge_cmd->add_option("BASE", merge_base, "Memory file of the Full snapshot (modified in place unless --out)")->required();
    merge_cmd->add_option("DIFF", merge_diffs, "Memory files of the Diff snapshots taken after it, oldest first")->required();
    auto* merge_out_opt = merge_cmd->add_option("--out", merge_out, "Write the merged memory to this new file; BASE stays as it is");
    try {
        // `ember run [OPTIONS] -- COMMAND...`: CLI11 hands what follows "--" to the parent app,
        // so the command is cut off here; without "--", prefix_command() stops at COMMAND.
        int parse_argc = argc;
        if (argc >= 2 && std::strcmp(argv[1], "run") == 0)
            for (int i = 2; i < argc; ++i)
                if (std::strcmp(argv[i], "--") == 0) {
                    run_dashdash.emplace(argv + i + 1, argv + argc);
                    parse_argc = i;
                    break;
                }
        app.parse(parse_argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return fail(run_cmd->parsed() ? ember::run::kStatusEmberFailed : EXIT_ARG_PARSING, e.what());
    }
    if (run_cmd->parsed()) {
        if (run_kernel_opt->count() > 0) run_args.kernel = run_kernel;
        if (run_initrd_opt->count() > 0) run_args.initrd = run_initrd;
        if (run_rootfs_opt->count() > 0) run_args.rootfs = run_rootfs;
        if (run_net_opt->count() > 0) run_args.net = run_net;
        if (run_keep_opt->count() > 0) run_args.keep_disk = run_keep;
        run_args.command = run_dashdash ? *run_dashdash : run_cmd->remaining();
        return ember::run::run_command(run_args);
    }
    if (merge_cmd->parsed()) {
        try {
            std::optional<std::string> out;
            if (merge_out_opt->count() > 0) out = merge_out;
            const auto sum = ember::merge_memory_files(merge_base, merge_diffs, out);
            std::printf("merged %zu diff file(s) into %s (%llu bytes copied)\n", merge_diffs.size(), sum.result.c_str(),
                        static_cast<unsigned long long>(sum.bytes_copied));
            return 0;
        } catch (const std::exception& e) {
            return fail(EXIT_GENERIC, e.what());
        }
    }
    if (version) {
        std::printf("Ember v%s\n", EMBER_VERSION);
        return 0;
    }
    // Firecracker prints the version alone ("v1.0.0") for both.
    if (snapshot_version) {
        std::printf("v%u.0.0\n", ember::kSnapshotFormatVersion);
        return 0;
    }
    if (!describe_snapshot.empty()) {
        try {
            std::printf("%s\n", ember::describe_snapshot_file_version(describe_snapshot).c_str());
            return 0;
        } catch (const std::exception& e) {
            return fail(EXIT_GENERIC, e.what());
        }
    }
    const std::pair<const CLI::Option*, const char*> later[] = {
        {metadata_opt, "--metadata is not supported yet: Ember has no MMDS"},
        {mmds_opt, "--mmds-size-limit is not supported yet: Ember has no MMDS"},
        {pci_opt, "--enable-pci is not supported yet: Ember has virtio-mmio devices only"},
    };
    for (const auto& [opt, why] : later)
        if (opt->count() > 0) return fail(EXIT_ARG_PARSING, why);
    if (!valid_instance_id(set.id)) return fail(EXIT_ARG_PARSING, "--id must be 1-64 letters, digits or '-'");
    if (no_api && set.config_file.empty()) return fail(EXIT_ARG_PARSING, "--no-api needs --config-file");
    // As Firecracker: a bad --level is a configuration error, a logger or metrics sink that
    // cannot be opened a generic one.
    auto lvl = ember::log::parse_level(level);
    if (!lvl) return fail(EXIT_BAD_CONFIGURATION, "--level must be one of Off, Error, Warning, Info, Debug, Trace");
    try {
        ember::log::configure({set.id, *lvl, show_level, show_origin, log_path, module});
    } catch (const std::exception& e) {
        return fail(EXIT_GENERIC, e.what());
    }
    if (filter_opt->count() > 0) {
        if (::access(seccomp_filter.c_str(), R_OK) != 0)
            return fail(EXIT_GENERIC, "--seccomp-filter " + seccomp_filter + ": " + std::strerror(errno));
        set.opts.seccomp = ember::SeccompMode::Custom;
        set.opts.seccomp_filter = seccomp_filter;
        LOG_WARN("--seccomp-filter %s: Ember does not install seccomp filters yet; this filter is not applied", seccomp_filter.c_str());
    } else if (no_seccomp) {
        set.opts.seccomp = ember::SeccompMode::Disabled;
        LOG_INFO("seccomp filtering disabled (--no-seccomp)");
    } else {
        LOG_INFO("Ember does not install seccomp filters yet (Firecracker would install its default ones)");
    }
    if (start_opt->count() > 0) set.start.start_us = start_us;
    if (start_cpu_opt->count() > 0) set.start.start_cpu_us = start_cpu_us;
    if (parent_cpu_opt->count() > 0) set.start.parent_cpu_us = parent_cpu_us;
    set.serve_api = !no_api;
    return run(set);
}
