#pragma once
// virtio-console (virtio 1.2 §5.3) with one port, no MULTIPORT: receiveq0 (host input) and
// transmitq0 (guest output), which Linux exposes as hvc0.
//
// Output: every transmit chain is consumed at once, on the vCPU that notified, and its bytes
// handed to a ConsoleOutput, which never blocks (vmm/base/console_output.hpp says why it must
// not). Input: the VMM's console reader offers bytes with enqueue_input(); what finds no receive
// buffer stays with the reader, which stops reading the host until on_rx_space tells it the
// driver posted buffers.

#include "vmm/base/console_output.hpp"
#include "devices/virtio/console/request.hpp"
#include "devices/virtio/device.hpp"

#include <atomic>
#include <functional>
#include <memory>
#include <optional>

namespace ember::virtio::console {

struct ConsoleMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, event_fails{0}, rx_queue_event_count{0}, tx_queue_event_count{0},
        rx_bytes_count{0}, rx_count{0}, rx_fails{0}, tx_bytes_count{0}, tx_count{0}, tx_malformed_chains{0};
    MetricValues values() const {
        return {
                {"activate_fails", value_of(activate_fails)},
                {"event_fails", value_of(event_fails)},
                {"rx_queue_event_count", value_of(rx_queue_event_count)},
                {"tx_queue_event_count", value_of(tx_queue_event_count)},
                {"rx_bytes_count", value_of(rx_bytes_count)},
                {"rx_count", value_of(rx_count)},
                {"rx_fails", value_of(rx_fails)},
                {"tx_bytes_count", value_of(tx_bytes_count)},
                {"tx_count", value_of(tx_count)},
                {"tx_malformed_chains", value_of(tx_malformed_chains)}};
    }
};

// A virtio-console device's state. `size` is the terminal size the driver was last told (none:
// F_SIZE not offered); it decides the features offered, so a restored device offers what the
// saved one did whatever its new host output is.
struct ConsoleState {
    DeviceState virtio;
    std::optional<ConsoleSize> size;
    bool size_announced = false; // the first configuration interrupt was raised
    bool input_waiting = false;  // host input waits for receive buffers (on_rx_space owed)
    bool operator==(const ConsoleState&) const = default;
};

class ConsoleDevice final : public VirtioDevice {
public:
    static constexpr std::uint16_t QUEUE_SIZE = 64;
    static constexpr std::size_t RX = 0, TX = 1;

    // `size`: the host terminal's size, offered with F_SIZE; none when output is not a terminal.
    ConsoleDevice(const GuestMemory& mem, std::shared_ptr<ConsoleOutput> out, std::optional<ConsoleSize> size);

    // Snapshot restore: the device writing to `out` in state `s`. `host_size` is the new host
    // terminal's size: when the saved device had a size and it differs, the driver is told with
    // a configuration change (as resize()). Throws ConfigError when the state does not fit
    // (VirtioDevice::restore_virtio).
    static std::shared_ptr<ConsoleDevice> restore(const GuestMemory& mem, std::shared_ptr<ConsoleOutput> out,
                                                  std::optional<ConsoleSize> host_size, const ConsoleState& s);
    // Output is consumed at once and input is copied synchronously: nothing is ever in flight.
    // The VM must be paused.
    ConsoleState save();

    std::uint32_t device_type() const noexcept override;
    std::uint64_t device_features() const noexcept override;
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override;
    bool activate() noexcept override;
    void reset_device() noexcept override;
    void process_queue(std::size_t index) noexcept override;
    std::string name() const override { return "console hvc0"; }
    // Output is served on the vCPU: Linux's hvc spins until each transmit buffer is used, and
    // serving it costs one bounded, non-blocking copy into the ConsoleOutput.
    bool serve_on_vcpu(std::size_t q) const noexcept override { return q == TX; }

    // Host input for the guest (event loop). Returns how many bytes went into receive buffers;
    // the caller keeps the rest until on_rx_space runs.
    std::size_t enqueue_input(std::span<const std::uint8_t> bytes) noexcept;
    // Called (on the event loop, under the device lock) when the driver posts receive buffers
    // after enqueue_input() found none. It must not call back into the device synchronously.
    void set_rx_space_callback(std::function<void()> cb) { on_rx_space_ = std::move(cb); }
    // A new terminal size (SIGWINCH): updates the configuration space and raises a
    // configuration-change interrupt, which is how Linux learns it without MULTIPORT
    // (virtio_console.c config_work_handler).
    void resize(ConsoleSize size) noexcept;

    const ConsoleMetrics& metrics() const noexcept { return metrics_; }

private:
    void tx_loop() noexcept;
    void announce_size() noexcept;

    std::shared_ptr<ConsoleOutput> out_;
    std::optional<ConsoleSize> size_;
    bool size_announced_ = false;
    bool input_waiting_ = false; // enqueue_input() ran out of receive buffers
    std::function<void()> on_rx_space_;
    std::vector<iovec> iov_;
    ConsoleMetrics metrics_;
};

} // namespace ember::virtio::console
