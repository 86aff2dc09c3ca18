#include "vmm/base/logger.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/output_file.hpp"
#include "vmm/base/unique_fd.hpp"

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <climits>
#include <fcntl.h>
#include <mutex>
#include <pthread.h>
#include <strings.h>
#include <unistd.h>

namespace ember::log {
namespace {

struct State {
    std::mutex mu; // guards opts and fd during configure(); writes use a snapshot of the fd
    Options opts;
    UniqueFd file;
    std::atomic<int> fd{STDERR_FILENO};
    std::atomic<int> level{static_cast<int>(Level::Warning)};
};

State& state() {
    static State s;
    return s;
}

std::atomic<std::uint64_t> g_start_ns{0};

std::uint64_t mono_ns() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

} // namespace

std::optional<Level> parse_level(const std::string& s) {
    static const std::pair<const char*, Level> names[] = {
        {"off", Level::Off},   {"error", Level::Error}, {"warning", Level::Warning}, {"warn", Level::Warning},
        {"info", Level::Info}, {"debug", Level::Debug}, {"trace", Level::Trace}};
    for (const auto& [n, l] : names)
        if (s.size() == std::strlen(n) && strcasecmp(n, s.c_str()) == 0) return l; // no match up to an embedded NUL
    return std::nullopt;
}

const char* level_name(Level l) {
    switch (l) {
    case Level::Off: return "OFF";
    case Level::Error: return "ERROR";
    case Level::Warning: return "WARN";
    case Level::Info: return "INFO";
    case Level::Debug: return "DEBUG";
    case Level::Trace: return "TRACE";
    }
    return "?";
}

void configure(const Options& o) {
    auto& s = state();
    std::lock_guard lk(s.mu);
    UniqueFd f;
    if (!o.path.empty()) {
        f = open_output(o.path, 0644);
        if (!f.valid()) throw_errno("log file " + o.path);
    }
    s.opts = o;
    s.fd = f.valid() ? f.get() : STDERR_FILENO;
    s.file = std::move(f);
    s.level = static_cast<int>(o.level);
}

Options current_options() {
    auto& s = state();
    std::lock_guard lk(s.mu);
    return s.opts;
}

bool enabled(Level l) noexcept { return static_cast<int>(l) <= state().level.load(std::memory_order_relaxed); }

namespace {
std::atomic<std::uint64_t> g_missed_logs{0};
std::atomic<std::uint64_t> g_log_fails{0};
} // namespace

void write(Level l, const char* file, int line, const char* fmt, ...) noexcept {
    auto& s = state();
    char buf[2048];
    static_assert(sizeof buf <= PIPE_BUF);
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    localtime_r(&ts.tv_sec, &t);
    char thread[32] = "?";
    pthread_getname_np(pthread_self(), thread, sizeof thread);
    int n;
    {
        std::lock_guard lk(s.mu);
        if (!s.opts.module.empty() && std::strncmp(file, s.opts.module.c_str(), s.opts.module.size()) != 0) return;
        n = std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09ld [%s:%s", t.tm_year + 1900,
                          t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec,
                          s.opts.instance_id.c_str(), thread);
        if (n > 0 && s.opts.show_level)
            n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), ":%s", level_name(l));
        if (n > 0 && s.opts.show_origin)
            n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), ":%s:%d", file, line);
    }
    if (n < 0 || static_cast<std::size_t>(n) >= sizeof buf - 4) return;
    n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), "] ");
    va_list ap;
    va_start(ap, fmt);
    int m = std::vsnprintf(buf + n, sizeof buf - static_cast<std::size_t>(n) - 1, fmt, ap);
    va_end(ap);
    if (m < 0) {
        g_log_fails.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    std::size_t len = std::min(static_cast<std::size_t>(n) + static_cast<std::size_t>(m), sizeof buf - 2);
    buf[len++] = '\n';
    // A full log FIFO drops the line rather than stall a vCPU; the loss is counted. A line is at
    // most PIPE_BUF bytes, so a pipe takes it whole or not at all.
    if (::write(s.fd.load(), buf, len) != static_cast<ssize_t>(len)) g_missed_logs.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t missed_log_count() noexcept { return g_missed_logs.load(std::memory_order_relaxed); }
std::uint64_t log_fails() noexcept { return g_log_fails.load(std::memory_order_relaxed); }

void mark_process_start() noexcept { g_start_ns = mono_ns(); }
std::uint64_t us_since_start() noexcept { return (mono_ns() - g_start_ns.load()) / 1000; }
std::uint64_t monotonic_us() noexcept { return mono_ns() / 1000; }
std::uint64_t process_cpu_us() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

} // namespace ember::log
