#include "vmm/base/rate_limiter.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

namespace ember {
namespace {
using u128 = unsigned __int128;
constexpr std::uint64_t NS_PER_MS = 1'000'000;
} // namespace

std::uint64_t monotonic_ns() noexcept {
    return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

std::optional<RateLimiterConfig> effective(const RateLimiterConfig& c) noexcept {
    RateLimiterConfig r;
    if (c.bandwidth && c.bandwidth->limits()) r.bandwidth = c.bandwidth;
    if (c.ops && c.ops->limits()) r.ops = c.ops;
    if (!r.limits()) return std::nullopt;
    return r;
}

TokenBucket::TokenBucket(const TokenBucketConfig& cfg, std::uint64_t now_ns) noexcept
    : cfg_(cfg), burst_(cfg.one_time_burst), budget_(cfg.size), last_update_(now_ns),
      refill_period_ns_(cfg.refill_time_ms * NS_PER_MS) {
    // The fraction size / period in lowest terms keeps the refill products small.
    const std::uint64_t g = std::gcd(cfg_.size, refill_period_ns_);
    capacity_ = cfg_.size / g;
    period_ = refill_period_ns_ / g;
}

std::uint64_t TokenBucket::refill_ns(std::uint64_t tokens) const noexcept {
    const u128 ns = u128{tokens} * period_ / capacity_;
    return ns > UINT64_MAX ? UINT64_MAX : static_cast<std::uint64_t>(ns);
}

void TokenBucket::auto_replenish(std::uint64_t now_ns) noexcept {
    const std::uint64_t elapsed = now_ns > last_update_ ? now_ns - last_update_ : 0;
    if (elapsed >= refill_period_ns_) {
        budget_ = cfg_.size;
        last_update_ = now_ns;
        return;
    }
    // elapsed < period, so tokens < size: no overflow, and the products fit in 128 bits.
    const u128 tokens = u128{elapsed} * capacity_ / period_;
    // Advance the clock only by the time those whole tokens took (rounded up), so the fraction
    // of a token already earned is carried over to the next refill (as Firecracker).
    const u128 used = (tokens * period_ + capacity_ - 1) / capacity_;
    last_update_ += static_cast<std::uint64_t>(used);
    const auto add = static_cast<std::uint64_t>(tokens);
    budget_ = add >= cfg_.size - budget_ ? cfg_.size : budget_ + add;
}

TokenBucket::Result TokenBucket::reduce(std::uint64_t tokens, std::uint64_t now_ns) noexcept {
    if (burst_ > 0) {
        if (burst_ >= tokens) {
            burst_ -= tokens;
            last_update_ = now_ns;
            return {Reduction::Success, 0};
        }
        tokens -= burst_;
        burst_ = 0;
    }
    // Unlike Firecracker, which refills only when a request finds the budget short (so a bucket
    // idle for a refill_time gives a second full bucket on top of the first), the budget is
    // brought up to date on every request: never more than `size` tokens in any refill_time.
    auto_replenish(now_ns);
    if (tokens > cfg_.size) {
        // Larger than the bucket can ever hold: let it through, empty the bucket and report
        // the excess, for which the caller must stay blocked. The excess is a debt: the refill
        // clock moves past the block, so the tokens of the block are not credited again.
        const std::uint64_t excess = tokens - budget_;
        budget_ = 0;
        const std::uint64_t base = std::max(last_update_, now_ns);
        const std::uint64_t debt = refill_ns(excess);
        last_update_ = debt > UINT64_MAX - base ? UINT64_MAX : base + debt;
        return {Reduction::OverConsumption, excess};
    }
    if (tokens > budget_) return {Reduction::Failure, 0};
    budget_ -= tokens;
    return {Reduction::Success, 0};
}

void TokenBucket::force_replenish(std::uint64_t tokens) noexcept {
    if (burst_ > 0) {
        burst_ = tokens > cfg_.one_time_burst - burst_ ? cfg_.one_time_burst : burst_ + tokens;
        return;
    }
    budget_ = tokens > cfg_.size - budget_ ? cfg_.size : budget_ + tokens;
}

RateLimiter::RateLimiter(const RateLimiterConfig& cfg, std::uint64_t now_ns) noexcept {
    if (cfg.bandwidth && cfg.bandwidth->limits()) bandwidth_.emplace(*cfg.bandwidth, now_ns);
    if (cfg.ops && cfg.ops->limits()) ops_.emplace(*cfg.ops, now_ns);
}

bool RateLimiter::consume(std::uint64_t tokens, TokenType type, std::uint64_t now_ns) noexcept {
    if (blocked_) return false;
    std::optional<TokenBucket>& b = type == TokenType::Bytes ? bandwidth_ : ops_;
    if (!b) return true;
    const TokenBucket::Result r = b->reduce(tokens, now_ns);
    switch (r.kind) {
    case TokenBucket::Reduction::Success: return true;
    case TokenBucket::Reduction::Failure:
        blocked_ = true;
        timer_ns_ = RETRY_NS;
        return false;
    case TokenBucket::Reduction::OverConsumption:
        // Admitted, but nothing more until the excess has refilled: excess / size refill times.
        blocked_ = true;
        timer_ns_ = std::max<std::uint64_t>(b->refill_ns(r.excess), 1);
        return true;
    }
    return true;
}

void RateLimiter::replenish(std::uint64_t tokens, TokenType type) noexcept {
    std::optional<TokenBucket>& b = type == TokenType::Bytes ? bandwidth_ : ops_;
    if (b) b->force_replenish(tokens);
}

void RateLimiter::update(const RateLimiterUpdate& u, std::uint64_t now_ns) noexcept {
    auto apply = [now_ns](std::optional<TokenBucket>& b, const std::optional<TokenBucketConfig>& c) {
        if (!c) return;
        if (c->limits()) b.emplace(*c, now_ns);
        else b.reset();
    };
    apply(bandwidth_, u.bandwidth);
    apply(ops_, u.ops);
    if (u.bandwidth || u.ops) blocked_ = false;
}

std::optional<RateLimiterConfig> RateLimiter::config() const noexcept {
    RateLimiterConfig c;
    if (bandwidth_) c.bandwidth = bandwidth_->config();
    if (ops_) c.ops = ops_->config();
    if (!c.limits()) return std::nullopt;
    return c;
}

} // namespace ember
