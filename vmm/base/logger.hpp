#pragma once
// Firecracker-format logging: "<timestamp> [<instance id>:<thread name>(:<LEVEL>)(:<file>:<line>)] msg".
// One write(2) per line, so lines from vCPU, event-loop and API threads never interleave.

#include <cstdint>
#include <optional>
#include <string>

namespace ember::log {

enum class Level { Off = 0, Error = 1, Warning = 2, Info = 3, Debug = 4, Trace = 5 };

// Case-insensitive Firecracker level name ("Error", "Warning" or "Warn", "Info", ...).
std::optional<Level> parse_level(const std::string& s);
const char* level_name(Level l);

struct Options {
    std::string instance_id = "anonymous-instance";
    Level level = Level::Warning;
    bool show_level = false;
    bool show_origin = false;
    std::string path; // empty: stderr; a named pipe needs no reader (see output_file.hpp)
    // Only lines logged from source files whose path in the source tree (e.g. "vmm/base/logger.cpp")
    // starts with this are written; empty: all.
    std::string module;
};

// Reconfigures the process-wide logger; throws SystemError when the path cannot be opened.
void configure(const Options& o);
// The options configure() last applied (the defaults before any).
Options current_options();
bool enabled(Level l) noexcept;
void write(Level l, const char* file, int line, const char* fmt, ...) noexcept __attribute__((format(printf, 4, 5)));

// Lines lost to a short write (full FIFO, closed file) and lines that could not be formatted,
// for the metrics' "logger" group.
std::uint64_t missed_log_count() noexcept;
std::uint64_t log_fails() noexcept;

// Monotonic microseconds since the process started (set by mark_process_start in main).
void mark_process_start() noexcept;
std::uint64_t us_since_start() noexcept;
// CLOCK_MONOTONIC and this process's CPU clock, in microseconds.
std::uint64_t monotonic_us() noexcept;
std::uint64_t process_cpu_us() noexcept;

} // namespace ember::log

#define EMBER_LOG(lvl, ...)                                                                        \
    do {                                                                                           \
        if (::ember::log::enabled(lvl)) ::ember::log::write(lvl, __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define LOG_ERROR(...) EMBER_LOG(::ember::log::Level::Error, __VA_ARGS__)
#define LOG_WARN(...) EMBER_LOG(::ember::log::Level::Warning, __VA_ARGS__)
#define LOG_INFO(...) EMBER_LOG(::ember::log::Level::Info, __VA_ARGS__)
#define LOG_DEBUG(...) EMBER_LOG(::ember::log::Level::Debug, __VA_ARGS__)
