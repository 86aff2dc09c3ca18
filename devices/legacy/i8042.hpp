#pragma once
// An i8042 keyboard controller, as much as a microVM needs: the controller command byte
// (so Linux's probe finishes without timeouts), CPU reset through command 0xFE (how a guest
// booted with reboot=k ends the VM), and a keyboard output buffer that can carry the
// Ctrl-Alt-Del scan codes to the guest (IRQ 1).

#include "vmm/base/irq.hpp"
#include "devices/legacy/byte_fifo.hpp"
#include "vmm/base/bus.hpp"

#include <cstdint>
#include <functional>
#include <mutex>
#include <type_traits>

namespace ember {

struct I8042State {
    std::uint8_t status = 0x14;  // SYS flag (self test passed) | keyboard not inhibited
    std::uint8_t control = 0x05; // keyboard interrupt enabled | SYS flag
    std::uint8_t pending_cmd = 0; // command waiting for its data byte on port 0x60
    std::uint8_t outport = 0x01;  // output port: bit 0 = system reset line inactive
    ByteFifo<16> out;             // bytes for the guest to read from port 0x60
    bool operator==(const I8042State&) const = default;
};

static_assert(std::is_trivially_copyable_v<I8042State>);

class I8042 final : public BusDevice {
public:
    // Registered at port 0x60 with length 5: offset 0 = data port, offset 4 = command/status.
    I8042(IrqLine& kbd_irq, std::function<void()> on_reset) : irq_(kbd_irq), on_reset_(std::move(on_reset)) {}
    // Snapshot restore: as restore(s) on a new controller.
    I8042(IrqLine& kbd_irq, std::function<void()> on_reset, const I8042State& s);

    void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override;

    // Queues Ctrl-Alt-Del (set 2 make and break codes) and raises IRQ 1. False if the buffer is full.
    bool send_ctrl_alt_del() noexcept;

    I8042State save() const;
    // Replaces the state. Throws ConfigError for one no guest could have produced (more output
    // bytes than the buffer holds, a pending command that takes no data byte). The output-full
    // status bit follows the buffer, and with output waiting and the keyboard interrupt enabled
    // IRQ 1 is raised again (edge-triggered: the old line's edge may be lost).
    void restore(const I8042State& s);
    // Raises IRQ 1 again if output waits with the keyboard interrupt enabled (see
    // VirtioDevice::refire_interrupt).
    void refire_interrupt() noexcept;
    std::uint64_t reset_count() const noexcept { return resets_; }

private:
    void push_out(std::uint8_t b) noexcept;
    void refresh_status() noexcept;

    IrqLine& irq_;
    std::function<void()> on_reset_;
    mutable std::mutex mu_;
    I8042State st_;
    std::uint64_t resets_ = 0;
};

} // namespace ember
