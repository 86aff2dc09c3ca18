#include "devices/legacy/i8042.hpp"

#include "vmm/base/error.hpp"

#include <algorithm>

namespace ember {
namespace {
constexpr std::uint64_t DATA = 0, CMD = 4;
constexpr std::uint8_t SB_OUT_FULL = 0x01, SB_LAST_WAS_CMD = 0x08;
constexpr std::uint8_t CB_KBD_INT = 0x01;
constexpr std::uint8_t CMD_READ_CTR = 0x20, CMD_WRITE_CTR = 0x60, CMD_SELF_TEST = 0xaa, CMD_KBD_TEST = 0xab,
                       CMD_KBD_DISABLE = 0xad, CMD_KBD_ENABLE = 0xae, CMD_READ_OUTP = 0xd0, CMD_WRITE_OUTP = 0xd1,
                       CMD_RESET_CPU = 0xfe;
constexpr std::size_t OUT_CAPACITY = decltype(I8042State::out)::capacity();
} // namespace

void I8042::refresh_status() noexcept {
    if (st_.out.empty()) st_.status &= static_cast<std::uint8_t>(~SB_OUT_FULL);
    else st_.status |= SB_OUT_FULL;
}

void I8042::push_out(std::uint8_t b) noexcept {
    (void)st_.out.push_back(b); // dropped when the buffer is full
    refresh_status();
}

void I8042::read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept {
    std::fill(data.begin(), data.end(), std::uint8_t{0xff});
    if (data.size() != 1) return;
    std::lock_guard lk(mu_);
    if (offset == CMD) {
        data[0] = st_.status;
    } else if (offset == DATA) {
        if (st_.out.empty()) {
            data[0] = 0;
        } else {
            data[0] = st_.out.pop_front();
        }
        refresh_status();
        if (!st_.out.empty() && (st_.control & CB_KBD_INT)) irq_.trigger();
    }
}

void I8042::write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept {
    if (data.size() != 1) return;
    const std::uint8_t v = data[0];
    bool reset = false;
    {
        std::lock_guard lk(mu_);
        if (offset == CMD) {
            st_.status |= SB_LAST_WAS_CMD;
            switch (v) {
            case CMD_READ_CTR: push_out(st_.control); break;
            case CMD_WRITE_CTR:
            case CMD_WRITE_OUTP: st_.pending_cmd = v; break;
            case CMD_READ_OUTP: push_out(st_.outport); break;
            case CMD_SELF_TEST: push_out(0x55); break;
            case CMD_KBD_TEST: push_out(0x00); break;
            case CMD_KBD_DISABLE: st_.control |= 0x10; break;
            case CMD_KBD_ENABLE: st_.control &= static_cast<std::uint8_t>(~0x10); break;
            case CMD_RESET_CPU:
                ++resets_;
                reset = true;
                break;
            default: break; // AUX and other commands: no device behind them
            }
        } else if (offset == DATA) {
            st_.status &= static_cast<std::uint8_t>(~SB_LAST_WAS_CMD);
            if (st_.pending_cmd == CMD_WRITE_CTR) {
                st_.control = v;
            } else if (st_.pending_cmd == CMD_WRITE_OUTP) {
                st_.outport = v;
            } else {
                // A byte for the keyboard itself: acknowledge it (0xFA), as an AT keyboard does.
                push_out(0xfa);
                if (st_.control & CB_KBD_INT) irq_.trigger();
            }
            st_.pending_cmd = 0;
        }
    }
    if (reset && on_reset_) on_reset_();
}

bool I8042::send_ctrl_alt_del() noexcept {
    // Scan code set 2: the control byte leaves XLATE clear, so Linux's i8042 driver runs in direct
    // mode and atkbd decodes set 2. Make codes Ctrl, Alt, Del (E0 71), then the breaks (F0 ..).
    static constexpr std::uint8_t seq[] = {0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14};
    std::lock_guard lk(mu_);
    if (st_.out.size() + sizeof seq > OUT_CAPACITY) return false;
    for (std::uint8_t b : seq) (void)st_.out.push_back(b);
    refresh_status();
    if (st_.control & CB_KBD_INT) irq_.trigger();
    return true;
}

I8042State I8042::save() const {
    std::lock_guard lk(mu_);
    return st_;
}

I8042::I8042(IrqLine& kbd_irq, std::function<void()> on_reset, const I8042State& s) : I8042(kbd_irq, std::move(on_reset)) {
    restore(s);
}

void I8042::refire_interrupt() noexcept {
    std::lock_guard lk(mu_);
    if (!st_.out.empty() && (st_.control & CB_KBD_INT)) irq_.trigger();
}

void I8042::restore(const I8042State& s) {
    if (!s.out.valid())
        throw ConfigError("i8042 state: " + std::to_string(s.out.count) + " output bytes from " + std::to_string(s.out.head) +
                          ", the buffer holds " + std::to_string(OUT_CAPACITY));
    if (s.pending_cmd != 0 && s.pending_cmd != CMD_WRITE_CTR && s.pending_cmd != CMD_WRITE_OUTP)
        throw ConfigError("i8042 state: pending command " + std::to_string(s.pending_cmd) + " takes no data byte");
    std::lock_guard lk(mu_);
    st_ = s;
    refresh_status();
    if (!st_.out.empty() && (st_.control & CB_KBD_INT)) irq_.trigger();
}

} // namespace ember
