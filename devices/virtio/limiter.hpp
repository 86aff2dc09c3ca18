#pragma once
// A device queue's rate limiter (vmm/base/rate_limiter.hpp) with its retry timer on the device's
// event loop. When a request is refused, or admitted by over-consuming, the limiter blocks and a
// steady_timer is armed for the delay it asks; on expiry the device's handler runs on the event
// loop, calls unblock() under the device mutex and serves the queue again. Nothing polls.
//
// Threading: every member is called under the owning device's mutex(); the handler takes it.

#include "vmm/base/rate_limiter.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>

namespace ember::virtio {

class QueueLimiter {
public:
    // `on_expiry` runs on the event loop when a block ends; it must take the device mutex,
    // call unblock() and serve the queue. It is not called after the QueueLimiter is destroyed.
    QueueLimiter(boost::asio::io_context& io, const std::optional<RateLimiterConfig>& cfg, std::function<void()> on_expiry);
    ~QueueLimiter();
    QueueLimiter(const QueueLimiter&) = delete;
    QueueLimiter& operator=(const QueueLimiter&) = delete;

    // Admits a request of one operation and `bytes` bytes (Firecracker's block and net
    // rate_limit_request: ops first, bytes reverted if the bytes bucket refuses). False: the
    // request must wait (put it back); the timer is armed.
    bool admit(std::uint64_t bytes) noexcept;
    // Gives back what admit() took, for a request that was admitted but could not be served.
    void refund(std::uint64_t bytes) noexcept;
    bool blocked() const noexcept { return limiter_.blocked(); }
    void unblock() noexcept { limiter_.unblock(); }
    // See RateLimiter::update: a changing update ends a block, so the caller serves its queue.
    void update(const RateLimiterUpdate& u) noexcept;
    std::optional<RateLimiterConfig> config() const noexcept { return limiter_.config(); }

private:
    void arm() noexcept;

    RateLimiter limiter_;
    boost::asio::steady_timer timer_;
    std::function<void()> on_expiry_;
    std::shared_ptr<QueueLimiter*> self_; // the timer handler's weak reference
};

} // namespace ember::virtio
