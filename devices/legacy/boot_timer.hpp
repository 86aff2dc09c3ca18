#pragma once
// Firecracker's boot timer: the guest writes the byte 123 to offset 0 of this MMIO page when it
// reaches userspace, and Ember logs the wall and CPU time since the process started.

#include "vmm/base/bus.hpp"

#include <atomic>

namespace ember {

struct BootTimerState {
    std::uint64_t boot_time_us = 0; // boot_time_us() when saved
    bool operator==(const BootTimerState&) const = default;
};

class BootTimer final : public BusDevice {
public:
    BootTimer() = default;
    // Snapshot restore: the guest has booted (or not) already; the time is kept for reports.
    explicit BootTimer(const BootTimerState& s) noexcept : boot_us_(s.boot_time_us) {}
    BootTimerState save() const noexcept { return {boot_us_.load()}; }

    static constexpr std::uint8_t MAGIC_BOOT_COMPLETE = 123;
    void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override;
    // Wall-clock microseconds since process start at the last signal, 0 if none yet.
    std::uint64_t boot_time_us() const noexcept { return boot_us_.load(); }

private:
    std::atomic<std::uint64_t> boot_us_{0};
};

} // namespace ember
