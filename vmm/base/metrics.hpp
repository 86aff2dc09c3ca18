#pragma once
// A device's counters as (name, value) pairs, in Firecracker's metric names. Each device's metrics
// struct lists its own fields with values(); the VMM turns them into metric groups without
// knowing the fields.

#include <atomic>
#include <cstdint>
#include <utility>
#include <vector>

namespace ember {

using MetricValues = std::vector<std::pair<const char*, std::uint64_t>>;

// Adds to a counter (relaxed: metrics are read by the VMM thread, never synchronised on).
inline void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) noexcept { c.fetch_add(n, std::memory_order_relaxed); }
inline std::uint64_t value_of(const std::atomic<std::uint64_t>& c) noexcept { return c.load(std::memory_order_relaxed); }

} // namespace ember
