#include "devices/legacy/boot_timer.hpp"

#include "vmm/base/logger.hpp"

#include <algorithm>

namespace ember {

void BootTimer::read(std::uint64_t, std::span<std::uint8_t> data) noexcept {
    std::fill(data.begin(), data.end(), std::uint8_t{0});
}

void BootTimer::write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept {
    if (offset != 0 || data.empty() || data[0] != MAGIC_BOOT_COMPLETE) return;
    const std::uint64_t us = log::us_since_start();
    const std::uint64_t cpu = log::process_cpu_us();
    boot_us_ = us;
    LOG_INFO("Guest-boot-time = %6llu us %llu ms, %6llu CPU us %llu CPU ms", static_cast<unsigned long long>(us),
             static_cast<unsigned long long>(us / 1000), static_cast<unsigned long long>(cpu),
             static_cast<unsigned long long>(cpu / 1000));
}

} // namespace ember
