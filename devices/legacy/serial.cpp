#include "devices/legacy/serial.hpp"

#include "vmm/base/error.hpp"

#include <algorithm>

namespace ember {
namespace {
// Register offsets from the base port (data sheet table 2).
constexpr std::uint64_t RBR_THR_DLL = 0, IER_DLM = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;
constexpr std::uint8_t IER_RDA = 0x01, IER_THRE = 0x02;
constexpr std::uint8_t IIR_NONE = 0x01, IIR_THRE = 0x02, IIR_RDA = 0x04, IIR_FIFO_ON = 0xc0;
constexpr std::uint8_t LSR_DR = 0x01, LSR_THRE = 0x20, LSR_TEMT = 0x40;
constexpr std::uint8_t MSR_CTS = 0x10, MSR_DSR = 0x20, MSR_RI = 0x40, MSR_DCD = 0x80;
constexpr std::uint8_t MCR_DTR = 0x01, MCR_RTS = 0x02, MCR_OUT1 = 0x04, MCR_OUT2 = 0x08;
} // namespace

bool Serial::irq_pending() const noexcept {
    return ((st_.ier & IER_RDA) && !st_.rx.empty()) || ((st_.ier & IER_THRE) && st_.thr_empty_pending);
}

std::uint8_t Serial::iir() const noexcept {
    const std::uint8_t fifo = (st_.fcr & 0x01) ? IIR_FIFO_ON : 0;
    if ((st_.ier & IER_RDA) && !st_.rx.empty()) return fifo | IIR_RDA;
    if ((st_.ier & IER_THRE) && st_.thr_empty_pending) return fifo | IIR_THRE;
    return fifo | IIR_NONE;
}

// Edge-triggered line: raise an edge whenever a new interrupt condition appears.
void Serial::update_irq(bool was_pending) noexcept {
    if (!was_pending && irq_pending()) irq_.trigger();
}

std::uint8_t Serial::read_reg(std::uint64_t off) noexcept {
    switch (off) {
    case RBR_THR_DLL: {
        if (dlab()) return st_.dll;
        counters_.read_count.fetch_add(1, std::memory_order_relaxed);
        if (st_.rx.empty()) {
            counters_.missed_read_count.fetch_add(1, std::memory_order_relaxed);
            return 0;
        }
        const std::uint8_t b = st_.rx.pop_front();
        return b;
    }
    case IER_DLM: return dlab() ? st_.dlm : st_.ier;
    case IIR_FCR: {
        const std::uint8_t v = iir();
        // Reading IIR while THRE is the reported source acknowledges it (data sheet, IIR).
        if ((v & 0x0f) == IIR_THRE) st_.thr_empty_pending = false;
        return v;
    }
    case LCR: return st_.lcr;
    case MCR: return st_.mcr;
    case LSR: return static_cast<std::uint8_t>((st_.rx.empty() ? 0 : LSR_DR) | LSR_THRE | LSR_TEMT);
    case MSR:
        if (loopback()) {
            return static_cast<std::uint8_t>(((st_.mcr & MCR_RTS) ? MSR_CTS : 0) | ((st_.mcr & MCR_DTR) ? MSR_DSR : 0) |
                                             ((st_.mcr & MCR_OUT1) ? MSR_RI : 0) | ((st_.mcr & MCR_OUT2) ? MSR_DCD : 0));
        }
        return MSR_DCD | MSR_DSR | MSR_CTS;
    case SCR: return st_.scr;
    default: return 0xff;
    }
}

void Serial::write_reg(std::uint64_t off, std::uint8_t v) noexcept {
    switch (off) {
    case RBR_THR_DLL:
        if (dlab()) {
            st_.dll = v;
            return;
        }
        counters_.write_count.fetch_add(1, std::memory_order_relaxed);
        if (loopback()) {
            (void)st_.rx.push_back(v); // dropped when the FIFO is full
        } else if (out_limit_ && out_limit_->reduce(1, monotonic_ns()).kind == TokenBucket::Reduction::Failure) {
            counters_.rate_limiter_dropped_bytes.fetch_add(1, std::memory_order_relaxed);
        } else if (!sink_(std::span(&v, 1))) {
            counters_.missed_write_count.fetch_add(1, std::memory_order_relaxed);
        }
        // The byte left at once: THR is empty again.
        st_.thr_empty_pending = true;
        return;
    case IER_DLM:
        if (dlab()) {
            st_.dlm = v;
            return;
        }
        // Enabling THRE with THR already empty raises the interrupt at once: Linux's 8250 driver
        // starts transmission by setting IER.THRI and waiting for it.
        if ((v & IER_THRE) && !(st_.ier & IER_THRE)) st_.thr_empty_pending = true;
        st_.ier = v & 0x0f;
        return;
    case IIR_FCR:
        st_.fcr = v & 0xc9; // bits 1 and 2 (FIFO resets) self-clear
        if (v & 0x02) st_.rx.clear();
        return;
    case LCR: st_.lcr = v; return;
    case MCR: st_.mcr = v & 0x1f; return;
    case SCR: st_.scr = v; return;
    default: return; // LSR and MSR are read-only
    }
}

void Serial::set_output_limit(const TokenBucketConfig& b) {
    std::lock_guard lk(mu_);
    out_limit_.emplace(b, monotonic_ns());
}

bool Serial::rx_just_drained(bool had_rx) noexcept {
    if (!had_rx || !st_.rx.empty() || !rx_refused_) return false;
    rx_refused_ = false;
    return true;
}

void Serial::read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept {
    if (data.size() != 1) {
        std::fill(data.begin(), data.end(), std::uint8_t{0xff});
        counters_.error_count.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    bool drained = false;
    {
        std::lock_guard lk(mu_);
        const bool before = irq_pending();
        const bool had_rx = !st_.rx.empty();
        data[0] = read_reg(offset);
        drained = rx_just_drained(had_rx);
        update_irq(before);
    }
    if (drained && rx_drained_) rx_drained_();
}

void Serial::write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept {
    if (data.size() != 1) {
        counters_.error_count.fetch_add(1, std::memory_order_relaxed);
        return;
    }
    bool drained = false;
    {
        std::lock_guard lk(mu_);
        const bool before = irq_pending();
        const bool had_rx = !st_.rx.empty();
        write_reg(offset, data[0]);
        // An RX FIFO reset (FCR bit 1) empties a FIFO that may have refused input, as RBR reads do.
        drained = rx_just_drained(had_rx);
        // A THR write re-arms THRE even if it was already pending: the driver waits for a new edge.
        if (offset == RBR_THR_DLL && !dlab() && (st_.ier & IER_THRE)) irq_.trigger();
        else update_irq(before);
    }
    if (drained && rx_drained_) rx_drained_();
}

std::size_t Serial::enqueue_input(std::span<const std::uint8_t> bytes) noexcept {
    std::lock_guard lk(mu_);
    const bool before = irq_pending();
    const std::size_t n = std::min(bytes.size(), st_.rx.room());
    for (std::size_t i = 0; i < n; ++i) (void)st_.rx.push_back(bytes[i]);
    if (n < bytes.size()) rx_refused_ = true;
    update_irq(before);
    return n;
}

SerialState Serial::save() const {
    std::lock_guard lk(mu_);
    return st_;
}

void Serial::refire_interrupt() noexcept {
    std::lock_guard lk(mu_);
    if (irq_pending()) irq_.trigger();
}

Serial::Serial(IrqLine& irq, Sink sink, const SerialState& s) : Serial(irq, std::move(sink)) { restore(s); }

void Serial::restore(const SerialState& s) {
    if (!s.rx.valid())
        throw ConfigError("serial state: " + std::to_string(s.rx.count) + " received bytes from " + std::to_string(s.rx.head) +
                          ", the FIFO holds " + std::to_string(RX_CAPACITY));
    if ((s.ier & ~0x0f) || (s.mcr & ~0x1f) || (s.fcr & ~0xc9)) throw ConfigError("serial state: reserved register bits set");
    std::lock_guard lk(mu_);
    st_ = s;
    rx_refused_ = false;
    if (irq_pending()) irq_.trigger();
}

} // namespace ember
