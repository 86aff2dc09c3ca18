// ember: command-line entry point. Flags follow Firecracker's where they overlap.

#include "api/config.hpp"
#include "api/controller.hpp"
#include "api/http_server.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
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
#include <cstring>
#include <fstream>
#include <pthread.h>
#include <sstream>


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

// The VMM thread (this one) runs the controller's event loop. With the API, the API thread
// serves HTTP and posts each parsed request here; without it (--no-api), the config file is all
// there is. Ember exits when the guest ends or on SIGTERM/SIGINT/SIGHUP.
int run(bool serve_api, const std::string& sock, std::size_t max_payload, const std::string& config_file,
        const std::string& id, const ember::RunOptions& opts) {
    namespace api = ember::api;
    LOG_INFO("Running Ember v%s", EMBER_VERSION);
    std::optional<ember::ConfigFile> initial;
    if (!config_file.empty()) {
        try {
            initial = ember::parse_config_document(read_file(config_file), ember::host_memory_mib());
        } catch (const std::exception& e) {
            return fail(EXIT_BAD_CONFIGURATION, e.what());
        }
    }
    auto io = std::make_unique<boost::asio::io_context>(1);
    int status = 0;
    std::string detail;
    auto controller = std::make_unique<api::Controller>(*io, id, opts, ember::host_memory_mib(), [&](int s, const std::string& d) {
        status = s;
        detail = d;
        io->stop();
    });
    api::Controller* ctl = controller.get();
    boost::asio::io_context* vmm_io = io.get();
    // Signals are handled before the socket exists: a client that sees the socket accept may
    // send SIGTERM at once, and that must end Ember cleanly, not kill it.
    auto signals = std::make_unique<boost::asio::signal_set>(*io, SIGINT, SIGTERM, SIGHUP);
    signals->async_wait([&](const boost::system::error_code& ec, int sig) {
        if (ec) return;
        const std::string why = std::string("received ") + strsignal(sig);
        if (ctl->vm()) ctl->vm()->request_exit(ember::VmExitKind::HostRequest, why);
        else io->stop();
    });
    api::HttpLimits limits;
    limits.max_body = max_payload;
    std::unique_ptr<api::HttpServer> server;
    if (serve_api) try {
        server = std::make_unique<api::HttpServer>(sock, limits, [ctl, vmm_io](api::HttpRequest req, api::HttpServer::Reply reply) {
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
            ctl->set_startup_time(ember::log::us_since_start(), ember::log::process_cpu_us());
            LOG_INFO("API server listening on %s", sock.c_str());
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
    ember::log::mark_process_start();
    pthread_setname_np(pthread_self(), "ember_vmm");
    std::signal(SIGPIPE, SIG_IGN);

    CLI::App app{"Ember: a KVM microVM monitor that speaks Firecracker's API and config format.", "ember"};
    std::string config_file, id = "anonymous-instance", log_path, level = "Warning", api_sock = "/run/ember.socket";
    std::size_t max_payload = 51200;
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
    app.add_option("--api-sock", api_sock, "Unix socket for the REST API (default /run/ember.socket)");
    app.add_option("--http-api-max-payload-size", max_payload, "Largest API request body in bytes (default 51200)");
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
    ember::RunOptions opts;
    opts.boot_timer = boot_timer;
    if (no_api && config_file.empty()) return fail(EXIT_ARG_PARSING, "--no-api needs --config-file");
    return run(!no_api, api_sock, max_payload, config_file, id, opts);
}
