#include "devices/virtio/limiter.hpp"

#include <algorithm>
#include <chrono>

namespace ember::virtio {

QueueLimiter::QueueLimiter(boost::asio::io_context& io, const std::optional<RateLimiterConfig>& cfg, std::function<void()> on_expiry)
    : limiter_(cfg ? RateLimiter(*cfg, monotonic_ns()) : RateLimiter()), timer_(io), on_expiry_(std::move(on_expiry)),
      self_(std::make_shared<QueueLimiter*>(this)) {}

QueueLimiter::~QueueLimiter() {
    // A pending wait completes with operation_aborted and touches nothing (arm()).
    timer_.cancel();
}

bool QueueLimiter::admit(std::uint64_t bytes) noexcept {
    const std::uint64_t now = monotonic_ns();
    bool ok = limiter_.consume(1, TokenType::Ops, now);
    if (ok && !limiter_.consume(bytes, TokenType::Bytes, now)) {
        limiter_.replenish(1, TokenType::Ops);
        ok = false;
    }
    arm();
    return ok;
}

void QueueLimiter::refund(std::uint64_t bytes) noexcept {
    limiter_.replenish(1, TokenType::Ops);
    limiter_.replenish(bytes, TokenType::Bytes);
}

void QueueLimiter::update(const RateLimiterUpdate& u) noexcept { limiter_.update(u, monotonic_ns()); }

void QueueLimiter::arm() noexcept {
    const std::uint64_t ns = limiter_.take_timer_ns();
    if (ns == 0) return; // no new block
    timer_.expires_after(std::chrono::nanoseconds(static_cast<std::int64_t>(std::min<std::uint64_t>(ns, INT64_MAX))));
    // An expiry already queued when the limiter is destroyed cannot be cancelled: the handler
    // holds only a weak reference and does nothing once the limiter is gone.
    timer_.async_wait([alive = std::weak_ptr<QueueLimiter*>(self_)](const boost::system::error_code& ec) {
        const auto self = alive.lock();
        if (ec || !self) return;
        (*self)->on_expiry_();
    });
}

} // namespace ember::virtio
