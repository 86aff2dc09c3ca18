// ember: command-line entry point. Flags follow Firecracker's where they overlap.

#include "api/config.hpp"
#include "vmm/error.hpp"
#include "vmm/logger.hpp"
#include "vmm/vm.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <pthread.h>
#include <sstream>

#ifndef EMBER_VERSION
#define EMBER_VERSION "0.0.0"
#endif

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

} // namespace

int main(int argc, char** argv) {
    ember::log::mark_process_start();
    pthread_setname_np(pthread_self(), "ember_vmm");
    std::signal(SIGPIPE, SIG_IGN);

    CLI::App app{"Ember: a KVM microVM monitor that speaks Firecracker's API and config format.", "ember"};
    std::string config_file, id = "anonymous-instance", log_path, level = "Warning";
    bool no_api = false, boot_timer = false, version = false, show_level = false, show_origin = false;
    app.add_option("--config-file", config_file, "Firecracker-format JSON file describing the microVM");
    app.add_flag("--no-api", no_api, "Run only from --config-file, without the API socket");
    app.add_flag("--boot-timer", boot_timer, "Log Guest-boot-time when the guest writes 123 to MMIO 0xC0000000");
    app.add_option("--id", id, "Instance id used in log lines (1-64 characters: letters, digits, '-')");
    app.add_option("--log-path", log_path, "Write log lines to this file or FIFO instead of stderr");
    app.add_option("--level", level, "Log level: Off, Error, Warning, Info, Debug, Trace");
    app.add_flag("--show-level", show_level, "Include the level in log lines");
    app.add_flag("--show-log-origin", show_origin, "Include file:line in log lines");
    app.add_flag("--version", version, "Print the version and exit");
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        return fail(EXIT_ARG_PARSING, e.what());
    }
    if (version) {
        std::printf("Ember v%s\n", EMBER_VERSION);
        return 0;
    }
    if (!valid_instance_id(id)) return fail(EXIT_ARG_PARSING, "--id must be 1-64 letters, digits or '-'");
    auto lvl = ember::log::parse_level(level);
    if (!lvl) return fail(EXIT_ARG_PARSING, "--level must be one of Off, Error, Warning, Info, Debug, Trace");
    try {
        ember::log::configure({id, *lvl, show_level, show_origin, log_path});
    } catch (const std::exception& e) {
        return fail(EXIT_BAD_CONFIGURATION, e.what());
    }
    if (!no_api) return fail(EXIT_ARG_PARSING, "the API server is not part of this build yet; run with --no-api --config-file FILE");
    if (config_file.empty()) return fail(EXIT_ARG_PARSING, "--no-api needs --config-file");
    LOG_INFO("Running Ember v%s", EMBER_VERSION);

    std::optional<ember::PreparedGuest> guest;
    try {
        guest = ember::prepare_guest(ember::parse_config_file(read_file(config_file), ember::host_memory_mib()));
    } catch (const std::exception& e) {
        return fail(EXIT_BAD_CONFIGURATION, e.what());
    }
    boost::asio::io_context io;
    int status = EXIT_GENERIC;
    std::string detail = "event loop ended without an exit reason";
    std::unique_ptr<ember::Vm> vm;
    try {
        ember::RunOptions opts;
        opts.boot_timer = boot_timer;
        vm = ember::Vm::create(io, std::move(*guest), opts, [&](int s, const std::string& d) {
            status = s;
            detail = d;
            io.stop();
        });
    } catch (const std::exception& e) {
        return fail(EXIT_GENERIC, e.what());
    }
    boost::asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
    signals.async_wait([&](const boost::system::error_code& ec, int sig) {
        if (!ec) vm->request_exit(ember::VmExitKind::HostRequest, std::string("received ") + strsignal(sig));
    });
    auto guard = boost::asio::make_work_guard(io);
    vm->start();
    io.run();
    vm.reset();
    if (status != 0) return fail(status, detail);
    return 0;
}
