#pragma once
// Driving an event loop from a unit test: timers (rate limiters) and completion watchers.

#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>

namespace ember::test {

// Runs `io` until `done` holds or `limit` passes; false on the timeout. Restarts a loop that ran
// out of work, so a handler queued later still runs.
inline bool run_io_until(boost::asio::io_context& io, const std::function<bool()>& done,
                         std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        if (io.stopped()) io.restart();
        io.run_one_for(std::chrono::milliseconds(10));
    }
    return true;
}

} // namespace ember::test
