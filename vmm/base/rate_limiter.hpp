#pragma once
// Token-bucket rate limiting with Firecracker's semantics (src/vmm/src/rate_limiter/mod.rs):
//  - a bucket of `size` tokens refills completely in `refill_time_ms`, continuously (tokens
//    accrue in proportion to the time elapsed), and starts full;
//  - `one_time_burst` tokens are spent before the bucket's own and never come back;
//  - a request larger than the bucket is let through (an "over-consumption"): it empties the
//    bucket and blocks the limiter for as long as refilling the excess takes;
// Two differences make Ember's bucket stricter, never looser, than Firecracker's: the budget is
// refilled on every request (Firecracker refills only when a request finds it short, so after
// an idle refill_time it hands out up to twice `size` at once), and an over-consumption's
// excess is repaid (Firecracker credits the tokens of the block time again afterwards). So a
// 1 MiB/s bucket of 1 MiB serves 4 MiB in 3 s after any idle time, as one would expect.
//  - a request that does not fit the current budget fails and blocks the limiter for 100 ms,
//    after which the caller retries (tokens accrue meanwhile).
// A blocked limiter refuses every request until the caller's timer fires and calls unblock().
// Pure logic: time is passed in (nanoseconds of a monotonic clock), so tests use a fake clock
// and devices steady_clock; arming the timer is the caller's job (timer_ns()).

#include <cstdint>
#include <optional>

namespace ember {

// Firecracker's TokenBucket object. A bucket with size 0 or refill_time 0 limits nothing.
struct TokenBucketConfig {
    std::uint64_t size = 0;
    std::uint64_t one_time_burst = 0;
    std::uint64_t refill_time_ms = 0;
    bool limits() const noexcept { return size != 0 && refill_time_ms != 0; }
    bool operator==(const TokenBucketConfig&) const = default;
};

// Firecracker's RateLimiter object: bandwidth counts bytes, ops counts requests. As configured
// on a device, a bucket that limits nothing is absent.
struct RateLimiterConfig {
    std::optional<TokenBucketConfig> bandwidth;
    std::optional<TokenBucketConfig> ops;
    bool limits() const noexcept { return bandwidth || ops; }
    bool operator==(const RateLimiterConfig&) const = default;
};

// A runtime change (PATCH /drives, PATCH /network-interfaces; Firecracker's RateLimiterUpdate):
// per bucket, absent leaves it as it is, a bucket that limits nothing (size or refill_time 0)
// removes it, any other replaces it with a new, full bucket.
struct RateLimiterUpdate {
    std::optional<TokenBucketConfig> bandwidth;
    std::optional<TokenBucketConfig> ops;
};

// steady_clock in nanoseconds: the clock devices run their limiters on.
std::uint64_t monotonic_ns() noexcept;

// Drops the buckets that limit nothing; nullopt if none is left.
std::optional<RateLimiterConfig> effective(const RateLimiterConfig& c) noexcept;
// The largest refill_time (ms) whose nanoseconds fit in 64 bits (Firecracker's TokenBucket::new
// refuses the rest).
inline constexpr std::uint64_t MAX_REFILL_TIME_MS = UINT64_MAX / 1'000'000;

class TokenBucket {
public:
    enum class Reduction { Failure, Success, OverConsumption };
    struct Result {
        Reduction kind = Reduction::Success;
        std::uint64_t excess = 0; // OverConsumption: tokens taken beyond what the bucket held
    };

    // `cfg.limits()` and cfg.refill_time_ms <= MAX_REFILL_TIME_MS. Starts full at `now_ns`.
    TokenBucket(const TokenBucketConfig& cfg, std::uint64_t now_ns) noexcept;

    Result reduce(std::uint64_t tokens, std::uint64_t now_ns) noexcept;
    // Gives tokens back (a request that was admitted and then could not be served); to the
    // one-time burst while some of it is left, capped at its initial size, else to the budget.
    void force_replenish(std::uint64_t tokens) noexcept;

    const TokenBucketConfig& config() const noexcept { return cfg_; }
    std::uint64_t budget() const noexcept { return budget_; }
    std::uint64_t one_time_burst() const noexcept { return burst_; }
    // Nanoseconds to refill `tokens` at this bucket's rate (rounded down).
    std::uint64_t refill_ns(std::uint64_t tokens) const noexcept;

private:
    void auto_replenish(std::uint64_t now_ns) noexcept;

    TokenBucketConfig cfg_;
    std::uint64_t burst_;
    std::uint64_t budget_;
    std::uint64_t last_update_;
    std::uint64_t refill_period_ns_;
    // size / gcd and refill_period_ns / gcd: tokens = elapsed * capacity_ / period_.
    std::uint64_t capacity_;
    std::uint64_t period_;
};

enum class TokenType { Bytes, Ops };

class RateLimiter {
public:
    // Firecracker's REFILL_TIMER_INTERVAL_MS: the retry delay after a request that did not fit.
    static constexpr std::uint64_t RETRY_NS = 100'000'000;

    RateLimiter() noexcept = default; // limits nothing
    RateLimiter(const RateLimiterConfig& cfg, std::uint64_t now_ns) noexcept;

    // Takes `tokens` from the bucket of `type`; true if the request may go ahead. False while
    // blocked, or when the tokens are not there (the limiter then blocks). After a call that
    // blocked the limiter, timer_ns() is the delay after which the caller calls unblock().
    // A type with no bucket always succeeds (unless blocked, as Firecracker).
    bool consume(std::uint64_t tokens, TokenType type, std::uint64_t now_ns) noexcept;
    void replenish(std::uint64_t tokens, TokenType type) noexcept;
    bool blocked() const noexcept { return blocked_; }
    // The delay the last blocking consume() asked for; 0 once taken (take_timer_ns()).
    std::uint64_t take_timer_ns() noexcept {
        const std::uint64_t t = timer_ns_;
        timer_ns_ = 0;
        return t;
    }
    // The caller's timer fired: requests may be tried again.
    void unblock() noexcept { blocked_ = false; }
    // Firecracker's update_buckets: a new bucket starts full. Unlike Firecracker, an update that
    // changes a bucket also ends a pending block (imposed by the old buckets, possibly for a
    // long over-consumption): lifting a limit takes effect at once. The caller's timer may
    // still fire; unblock() is then a no-op.
    void update(const RateLimiterUpdate& u, std::uint64_t now_ns) noexcept;
    // The buckets in force (as configured, not as currently filled).
    std::optional<RateLimiterConfig> config() const noexcept;

    const std::optional<TokenBucket>& bandwidth() const noexcept { return bandwidth_; }
    const std::optional<TokenBucket>& ops() const noexcept { return ops_; }

private:
    std::optional<TokenBucket> bandwidth_, ops_;
    bool blocked_ = false;
    std::uint64_t timer_ns_ = 0;
};

} // namespace ember
