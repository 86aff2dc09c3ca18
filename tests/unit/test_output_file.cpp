// Output sinks named by a path (log_path, metrics_path, serial_out_path): a named pipe with no
// reader yet is accepted, its output waits for the reader, and a full pipe drops (and counts)
// instead of blocking.

#include "api/controller.hpp"
#include "api/routes.hpp"
#include "test_util.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/base/output_file.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using nlohmann::json;

namespace {

using ember::test::TempDir;

UniqueFd open_reader(const std::string& fifo) {
    UniqueFd r(::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
    REQUIRE(r.valid());
    return r;
}

// Everything the pipe holds now (the reader is non-blocking).
std::string drain(const UniqueFd& r) {
    std::string got;
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(r.get(), buf, sizeof buf);
        if (n <= 0) break;
        got.append(buf, static_cast<std::size_t>(n));
    }
    return got;
}

// Shrinks the pipe to one page (it must hold at most that much), so tests fill it quickly.
void shrink(const UniqueFd& r) { REQUIRE(::fcntl(r.get(), F_SETPIPE_SZ, 4096) == 4096); }

// Puts the logger back to stderr at the default level whatever a test did.
struct LoggerReset {
    ~LoggerReset() { log::configure({}); }
};

} // namespace

TEST_CASE("open_output: a named pipe needs no reader, and never blocks or fails with EPIPE", "[output]") {
    TempDir s;
    const std::string fifo = s.fifo("out");
    UniqueFd w = open_output(fifo, 0644);
    REQUIRE(w.valid()); // a write-only non-blocking open would fail with ENXIO here
    CHECK((::fcntl(w.get(), F_GETFL) & O_NONBLOCK) != 0);
    CHECK((::fcntl(w.get(), F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(::write(w.get(), "before\n", 7) == 7);
    {
        UniqueFd r = open_reader(fifo);
        CHECK(drain(r) == "before\n"); // written before any reader, read by the first one
        CHECK(::write(w.get(), "during\n", 7) == 7);
        CHECK(drain(r) == "during\n");
        shrink(r);
    } // the reader leaves
    CHECK(::write(w.get(), "after\n", 6) == 6); // no EPIPE: kept for the next reader
    const std::string filler(4096, 'x');
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(::write(w.get(), filler.data(), filler.size()) == -1);
    CHECK(errno == EAGAIN); // a full pipe refuses at once
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    UniqueFd r = open_reader(fifo);
    CHECK(drain(r) == "after\n");
}

TEST_CASE("RecordWriter: a record a full pipe cuts is finished before the next; others drop whole", "[output]") {
    int p[2];
    REQUIRE(::pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    UniqueFd r(p[0]);
    REQUIRE(::fcntl(p[1], F_SETPIPE_SZ, 4096) == 4096);
    RecordWriter w{UniqueFd(p[1])};
    const std::string a(6000, 'a'), b(100, 'b'), c(100, 'c');
    CHECK(w.write(a)); // started: the pipe took one page
    CHECK(w.pending() == 6000 - 4096);
    CHECK_FALSE(w.write(b)); // the pipe is still full: b is dropped, a's end still waits
    CHECK(w.pending() == 6000 - 4096);
    std::string got = drain(r);
    CHECK(w.write(c)); // finishes a, then writes c
    CHECK(w.pending() == 0);
    got += drain(r);
    CHECK(got == a + c);
    r.reset(); // no reader at all on a plain pipe: EPIPE (SIGPIPE is ignored, as in Ember), a failure
    const auto old = std::signal(SIGPIPE, SIG_IGN);
    CHECK_FALSE(w.write(b));
    std::signal(SIGPIPE, old);
    CHECK(w.pending() == 0);
}

TEST_CASE("open_output: a regular file is created with the mode and appended to", "[output]") {
    TempDir s;
    const std::string path = s.file("out");
    {
        UniqueFd w = open_output(path, 0640);
        REQUIRE(w.valid());
        CHECK(::write(w.get(), "one\n", 4) == 4);
    }
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK((st.st_mode & 0777 & ~0640u) == 0); // the mode, less the umask
    {
        UniqueFd w = open_output(path, 0640);
        REQUIRE(w.valid());
        CHECK(::write(w.get(), "two\n", 4) == 4);
    }
    UniqueFd r(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    CHECK(drain(r) == "one\ntwo\n");
    errno = 0;
    CHECK_FALSE(open_output(s.file("missing-dir") + "/x", 0644).valid());
    CHECK(errno == ENOENT);
}

TEST_CASE("logger: a FIFO log_path without a reader; --module keeps lines from matching source files", "[output]") {
    LoggerReset reset;
    TempDir s;
    const std::string fifo = s.fifo("log");
    log::Options o;
    o.instance_id = "out-test";
    o.level = log::Level::Info;
    o.path = fifo;
    o.module = "tests/unit/test_output_file";
    log::configure(o);
    LOG_INFO("kept %d", 1);
    o.module = "vmm/";
    log::configure(o);
    LOG_INFO("filtered %d", 2);
    o.module.clear();
    log::configure(o);
    LOG_INFO("unfiltered %d", 3);
    UniqueFd r = open_reader(fifo);
    const std::string got = drain(r);
    CHECK_THAT(got, Catch::Contains("[out-test:") && Catch::Contains("] kept 1\n") && Catch::Contains("] unfiltered 3\n"));
    CHECK_THAT(got, !Catch::Contains("filtered 2"));
}

TEST_CASE("logger: a full FIFO drops whole lines and counts them, without blocking", "[output]") {
    LoggerReset reset;
    TempDir s;
    const std::string fifo = s.fifo("log");
    log::Options o;
    o.level = log::Level::Info;
    o.path = fifo;
    log::configure(o);
    {
        UniqueFd r = open_reader(fifo);
        shrink(r);
    } // the reader leaves; the page-sized pipe fills after a few dozen lines
    const std::uint64_t missed0 = log::missed_log_count();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string pad(100, 'p');
    for (int i = 0; i < 200; ++i) LOG_INFO("line %03d %s", i, pad.c_str());
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
    const std::uint64_t missed = log::missed_log_count() - missed0;
    CHECK(missed > 100);
    CHECK(missed < 200);
    UniqueFd r = open_reader(fifo);
    const std::string got = drain(r);
    CHECK(got.size() <= 4096);
    REQUIRE(!got.empty());
    CHECK(got.back() == '\n'); // no line was cut
    std::size_t lines = 0;
    for (char c : got) lines += c == '\n';
    CHECK(lines + missed == 200);
}

namespace {

struct ControllerRig {
    boost::asio::io_context io;
    RunOptions opts;
    api::Controller ctl{io, "out-test", opts, 4096, nullptr};
    api::Response call(const std::string& method, const std::string& path, const std::string& body = "") {
        auto r = api::route(method, path, body);
        REQUIRE(std::holds_alternative<api::Action>(r));
        return ctl.handle(std::get<api::Action>(r));
    }
};

} // namespace

TEST_CASE("PUT /metrics: a FIFO without a reader; a line that does not fit is dropped whole and counted", "[output]") {
    TempDir s;
    const std::string fifo = s.fifo("metrics");
    ControllerRig rig;
    REQUIRE(rig.call("PUT", "/metrics", json{{"metrics_path", fifo}}.dump()).status == 204);
    REQUIRE(rig.ctl.write_metrics()); // FlushMetrics is refused before boot, as in Firecracker
    UniqueFd r = open_reader(fifo);
    std::string got = drain(r);
    REQUIRE(!got.empty());
    CHECK(got.back() == '\n');
    const json first = json::parse(got.substr(0, got.size() - 1));
    CHECK(first.at("logger").at("missed_metrics_count") == 0);

    // Leave the pipe less room than a metrics line needs.
    shrink(r);
    UniqueFd filler(::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    REQUIRE(filler.valid());
    const std::string fill(4096 - 64, 'f');
    REQUIRE(::write(filler.get(), fill.data(), fill.size()) == static_cast<ssize_t>(fill.size()));
    REQUIRE(rig.ctl.write_metrics()); // FlushMetrics is refused before boot, as in Firecracker
    CHECK(drain(r) == fill); // nothing of the line: no half line glued to the next one
    REQUIRE(rig.ctl.write_metrics()); // FlushMetrics is refused before boot, as in Firecracker
    got = drain(r);
    REQUIRE(!got.empty());
    const json third = json::parse(got.substr(0, got.size() - 1));
    CHECK(third.at("logger").at("missed_metrics_count") == 1);
    CHECK(third.at("logger").at("metrics_fails") == 1);
}
