#pragma once
// A 16550A UART (National Semiconductor PC16550D data sheet), enough for Linux's 8250 driver:
// divisor latch, IER/IIR with THR-empty and received-data interrupts, LCR, MCR with loopback,
// LSR, MSR and scratch. Output goes to a sink as the guest writes THR; input is queued by the
// event loop into a bounded FIFO that the guest drains through RBR.

#include "vmm/base/irq.hpp"
#include "devices/legacy/byte_fifo.hpp"
#include "vmm/base/bus.hpp"
#include "vmm/base/metrics.hpp"
#include "vmm/base/rate_limiter.hpp"

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>

namespace ember {

// Register state, plain so it can be saved and restored with a snapshot. Restore checks it
// (Serial's restoring constructor): rx holds at most Serial::RX_CAPACITY bytes, ier/mcr/fcr only
// bits a guest write can leave there.
struct SerialState {
    std::uint8_t ier = 0;
    std::uint8_t lcr = 0x03; // 8N1
    std::uint8_t mcr = 0x08; // OUT2: interrupts routed to the PIC
    std::uint8_t scr = 0;
    std::uint8_t dll = 0x0c; // 9600 baud
    std::uint8_t dlm = 0;
    std::uint8_t fcr = 0;
    bool thr_empty_pending = false; // THRE interrupt raised and not yet acknowledged
    ByteFifo<64> rx;                // received bytes for the guest (RBR)
    bool operator==(const SerialState&) const = default;
};

static_assert(std::is_trivially_copyable_v<SerialState>);

struct SerialCounters {
    std::atomic<std::uint64_t> read_count{0};
    std::atomic<std::uint64_t> write_count{0};
    std::atomic<std::uint64_t> missed_read_count{0};  // RBR read with an empty FIFO
    std::atomic<std::uint64_t> missed_write_count{0}; // output the sink could not take
    std::atomic<std::uint64_t> error_count{0};
    std::atomic<std::uint64_t> rate_limiter_dropped_bytes{0}; // output over the serial rate limit
    // Firecracker's SerialDeviceMetrics; flush_count stays 0: output is never buffered here.
    MetricValues values() const {
        return {{"read_count", value_of(read_count)},
                {"write_count", value_of(write_count)},
                {"missed_read_count", value_of(missed_read_count)},
                {"missed_write_count", value_of(missed_write_count)},
                {"error_count", value_of(error_count)},
                {"flush_count", 0},
                {"rate_limiter_dropped_bytes", value_of(rate_limiter_dropped_bytes)}};
    }
};

class Serial final : public BusDevice {
public:
    static constexpr std::size_t RX_CAPACITY = decltype(SerialState::rx)::capacity();
    // Returns false when the host could not take the byte (counted as a missed write).
    using Sink = std::function<bool(std::span<const std::uint8_t>)>;

    Serial(IrqLine& irq, Sink sink) : irq_(irq), sink_(std::move(sink)) {}
    // Snapshot restore: as restore(s) on a new UART. Throws ConfigError for a state no guest
    // could have produced.
    Serial(IrqLine& irq, Sink sink, const SerialState& s);

    void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override;

    // Queues host input for the guest; returns how many bytes fit (the FIFO holds RX_CAPACITY).
    std::size_t enqueue_input(std::span<const std::uint8_t> bytes) noexcept;
    // Called (from a vCPU thread) when the guest empties a FIFO that had refused input.
    void set_rx_drained_callback(std::function<void()> cb) { rx_drained_ = std::move(cb); }
    // Firecracker 1.16's serial rate_limiter: each byte written to THR takes a token from this
    // bucket (a TokenBucket, no retry timer); a byte that finds none is dropped and counted in
    // rate_limiter_dropped_bytes. Set before the vCPUs run; `b.limits()`.
    void set_output_limit(const TokenBucketConfig& b);

    SerialState save() const;
    // Replaces the register state (checked as by the restoring constructor). The line is
    // edge-triggered and the edge of a pending interrupt may have been lost with the old line,
    // so a pending interrupt (IIR not "none") is raised again; an extra edge is harmless, as the
    // 8250 driver reads IIR.
    void restore(const SerialState& s);
    // Raises the line again if an interrupt is pending (see VirtioDevice::refire_interrupt).
    void refire_interrupt() noexcept;
    const SerialCounters& counters() const noexcept { return counters_; }

private:
    std::uint8_t read_reg(std::uint64_t off) noexcept;
    void write_reg(std::uint64_t off, std::uint8_t v) noexcept;
    std::uint8_t iir() const noexcept;
    bool irq_pending() const noexcept;
    void update_irq(bool was_pending) noexcept;
    bool loopback() const noexcept { return st_.mcr & 0x10; }
    bool dlab() const noexcept { return st_.lcr & 0x80; }
    // True once when a FIFO that refused input was just emptied; the caller, outside the lock,
    // then tells the event loop to resume reading host input. Needs mu_ held.
    bool rx_just_drained(bool had_rx) noexcept;

    IrqLine& irq_;
    Sink sink_;
    std::function<void()> rx_drained_;
    mutable std::mutex mu_;
    SerialState st_;
    bool rx_refused_ = false;
    SerialCounters counters_;
    std::optional<TokenBucket> out_limit_; // under mu_
};

} // namespace ember
