#pragma once
// The host end of the guest console, shared by the 16550 serial port and virtio-console: output
// goes to stdout or to Firecracker's `serial_out_path` (a file or a named pipe).
//
// Invariant: a guest write never blocks on the host. Output a slow reader cannot take yet waits
// in a bounded buffer that the event loop flushes when the descriptor becomes writable; beyond
// the bound it is dropped and counted. This matters for virtio-console: Linux's hvc driver spins
// with interrupts off until the device has consumed each transmit buffer
// (drivers/char/virtio_console.c, __send_to_port), so the device must always consume at once.

#include "vmm/base/metrics.hpp"
#include "vmm/base/unique_fd.hpp"

#include <atomic>
#include <chrono>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace ember {

struct OutputMetrics {
    std::atomic<std::uint64_t> bytes_written{0}; // reached the host descriptor
    std::atomic<std::uint64_t> bytes_dropped{0}; // did not fit the buffer, or the write failed
    std::atomic<std::uint64_t> write_fails{0};   // write(2) errors other than EAGAIN
    MetricValues values() const {
        return {{"bytes_written", value_of(bytes_written)}, {"bytes_dropped", value_of(bytes_dropped)}, {"write_fails", value_of(write_fails)}};
    }
};

class ConsoleOutput {
public:
    static constexpr std::size_t DEFAULT_CAPACITY = std::size_t{1} << 20;

    // Takes ownership of `fd`. A descriptor the event loop can poll (pipe, FIFO, socket, tty)
    // is made non-blocking (its flags are restored on destruction); others (regular files,
    // /dev/null) never block for long and are written directly.
    ConsoleOutput(boost::asio::io_context& io, UniqueFd fd, std::size_t capacity = DEFAULT_CAPACITY);
    ~ConsoleOutput();
    ConsoleOutput(const ConsoleOutput&) = delete;
    ConsoleOutput& operator=(const ConsoleOutput&) = delete;

    // A duplicate of stdout.
    static UniqueFd dup_stdout();
    // Opens `serial_out_path` for appending, creating a regular file if missing. A named pipe
    // needs no reader yet (open_output). Throws ConfigError naming the path.
    static UniqueFd open_path(const std::string& path);

    // Any thread; never blocks. Returns the bytes accepted (written or buffered); the rest is
    // dropped and counted.
    std::size_t write(std::span<const std::uint8_t> bytes) noexcept;
    // Bytes waiting for the host to read.
    std::size_t buffered() const noexcept;
    // Tries, for at most `budget`, to hand what is buffered to the host (used at VM exit so the
    // guest's last lines are not lost). Blocks the caller; not for device paths.
    void drain(std::chrono::milliseconds budget) noexcept;
    const OutputMetrics& metrics() const noexcept { return metrics_; }

private:
    // Writes buffered bytes while the descriptor takes them; needs mu_.
    void flush_locked() noexcept;
    void arm() noexcept;

    boost::asio::io_context& io_;
    UniqueFd fd_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> sd_; // null: direct writes
    int saved_flags_ = -1;
    std::size_t capacity_;
    mutable std::mutex mu_;
    std::vector<std::uint8_t> buf_; // pending bytes are buf_[head_, buf_.size())
    std::size_t head_ = 0;
    bool armed_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    OutputMetrics metrics_;
};

} // namespace ember
