// Token buckets and rate limiters (vmm/base/rate_limiter.hpp) on a fake clock, and Firecracker's
// RateLimiter / TokenBucket JSON (api/rate_limiter_config.hpp).

#include "api/config.hpp"
#include "api/rate_limiter_config.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/rate_limiter.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

using namespace ember;
using nlohmann::json;
using R = TokenBucket::Reduction;

namespace {
constexpr std::uint64_t MS = 1'000'000; // ns
constexpr std::uint64_t T0 = 5'000 * MS; // any start: the clock is only ever compared
} // namespace

TEST_CASE("token bucket: starts full, then refills in proportion to the time elapsed") {
    TokenBucket b({1000, 0, 1000}, T0); // 1000 tokens a second
    CHECK(b.budget() == 1000);
    CHECK(b.reduce(600, T0).kind == R::Success);
    CHECK(b.reduce(400, T0).kind == R::Success);
    CHECK(b.budget() == 0);
    CHECK(b.reduce(1, T0).kind == R::Failure);
    // 1 ms later one token has refilled, and only one.
    CHECK(b.reduce(1, T0 + MS).kind == R::Success);
    CHECK(b.reduce(1, T0 + MS).kind == R::Failure);
    // Half the refill time refills half the bucket.
    CHECK(b.reduce(500, T0 + 501 * MS).kind == R::Success);
    CHECK(b.reduce(1, T0 + 501 * MS).kind == R::Failure);
    // A whole refill time (or more) fills it, never beyond its size.
    CHECK(b.reduce(1001, T0 + 10'000 * MS).kind == R::OverConsumption);
    TokenBucket full({1000, 0, 1000}, T0);
    CHECK(full.reduce(1, T0 + 10'000 * MS).kind == R::Success);
    CHECK(full.budget() == 999);
}

TEST_CASE("token bucket: fractions of a token carry over between refills") {
    // 3 tokens every 10 ms: one per 3.33 ms. Two refills 2.5 ms apart make 5 ms, so one token
    // (a single refill of 2.5 ms alone gives none).
    TokenBucket b({3, 0, 10}, T0);
    REQUIRE(b.reduce(3, T0).kind == R::Success);
    CHECK(b.reduce(1, T0 + 2'500'000).kind == R::Failure);
    CHECK(b.reduce(1, T0 + 5'000'000).kind == R::Success);
    CHECK(b.reduce(1, T0 + 5'000'000).kind == R::Failure);
    CHECK(b.reduce(1, T0 + 6'700'000).kind == R::Success); // 6.67 ms: the second token
}

TEST_CASE("token bucket: the one-time burst is spent first and never refills") {
    TokenBucket b({100, 50, 1000}, T0);
    CHECK(b.reduce(30, T0).kind == R::Success);
    CHECK(b.one_time_burst() == 20);
    CHECK(b.budget() == 100); // untouched while the burst lasts
    // 20 from the burst, 80 from the bucket.
    CHECK(b.reduce(100, T0).kind == R::Success);
    CHECK(b.one_time_burst() == 0);
    CHECK(b.budget() == 20);
    // A full refill later the bucket is full again, but the burst is gone for good.
    CHECK(b.reduce(100, T0 + 2000 * MS).kind == R::Success);
    CHECK(b.one_time_burst() == 0);
    CHECK(b.reduce(1, T0 + 2000 * MS).kind == R::Failure);
}

TEST_CASE("token bucket: a request larger than the bucket goes through and reports the excess") {
    TokenBucket b({100, 0, 1000}, T0);
    REQUIRE(b.reduce(40, T0).kind == R::Success);
    const auto r = b.reduce(250, T0);
    CHECK(r.kind == R::OverConsumption);
    CHECK(r.excess == 190); // 60 were in the bucket
    CHECK(b.budget() == 0);
    CHECK(b.refill_ns(190) == 1900 * MS);
    // Nothing refills until the excess has been repaid.
    CHECK(b.reduce(1, T0 + 1900 * MS).kind == R::Failure);
    CHECK(b.reduce(1, T0 + 1910 * MS).kind == R::Success);
    // Also past a partly used one-time burst.
    TokenBucket c({100, 30, 1000}, T0);
    const auto r2 = c.reduce(330, T0);
    CHECK(r2.kind == R::OverConsumption);
    CHECK(r2.excess == 200);
}

TEST_CASE("token bucket: giving tokens back is capped") {
    TokenBucket b({100, 10, 1000}, T0);
    REQUIRE(b.reduce(5, T0).kind == R::Success);
    b.force_replenish(1000);
    CHECK(b.one_time_burst() == 10); // the burst never exceeds its initial size
    REQUIRE(b.reduce(110, T0).kind == R::Success);
    b.force_replenish(30);
    CHECK(b.budget() == 30);
    b.force_replenish(UINT64_MAX);
    CHECK(b.budget() == 100);
}

TEST_CASE("token bucket: extreme sizes and refill times do not overflow") {
    TokenBucket b({UINT64_MAX, 0, MAX_REFILL_TIME_MS}, T0);
    CHECK(b.reduce(UINT64_MAX, T0).kind == R::Success);
    CHECK(b.reduce(1, T0).kind == R::Failure);
    CHECK(b.reduce(1, T0 + 1000 * MS).kind == R::Success); // ~1e9 tokens refilled in a second
    CHECK(b.budget() > 0);
    TokenBucket one({1, UINT64_MAX, 1}, T0);
    CHECK(one.reduce(UINT64_MAX, T0).kind == R::Success);
    CHECK(one.reduce(UINT64_MAX, T0).kind == R::OverConsumption);
    CHECK(one.refill_ns(UINT64_MAX) == UINT64_MAX); // saturates
}

TEST_CASE("rate limiter: a refused request blocks it until the timer, for 100 ms") {
    RateLimiter l({TokenBucketConfig{1000, 0, 1000}, std::nullopt}, T0);
    CHECK(l.consume(1000, TokenType::Bytes, T0));
    CHECK(l.consume(5, TokenType::Ops, T0)); // no ops bucket: unlimited
    CHECK_FALSE(l.blocked());
    CHECK(l.take_timer_ns() == 0);
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0));
    CHECK(l.blocked());
    CHECK(l.take_timer_ns() == RateLimiter::RETRY_NS);
    // While blocked everything is refused, even with budget, and no second timer is asked for.
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0 + 5000 * MS));
    CHECK_FALSE(l.consume(1, TokenType::Ops, T0 + 5000 * MS));
    CHECK(l.take_timer_ns() == 0);
    l.unblock();
    CHECK(l.consume(100, TokenType::Bytes, T0 + 100 * MS)); // 100 ms refilled 100 bytes
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0 + 100 * MS));
}

TEST_CASE("rate limiter: an over-consumption is admitted and blocks for the excess's refill time") {
    RateLimiter l({TokenBucketConfig{1 << 20, 0, 1000}, std::nullopt}, T0); // 1 MiB/s
    // 4 MiB at once: the full bucket, then 3 MiB over: 3 s blocked (Firecracker's ratio x refill_time).
    CHECK(l.consume(4 << 20, TokenType::Bytes, T0));
    CHECK(l.blocked());
    CHECK(l.take_timer_ns() == 3000 * MS);
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0 + 1000 * MS));
    l.unblock();
    // The block repaid the excess: the bucket is empty when it ends, and refills from then on.
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0 + 3000 * MS));
    l.unblock();
    CHECK(l.consume(1048, TokenType::Bytes, T0 + 3001 * MS));
    CHECK_FALSE(l.consume(1, TokenType::Bytes, T0 + 3001 * MS));
}

TEST_CASE("rate limiter: an idle bucket gives one bucketful, not two (unlike Firecracker)") {
    // Created long before use: 1 MiB at once, then 1 MiB/s.
    RateLimiter l({TokenBucketConfig{1 << 20, 0, 1000}, std::nullopt}, T0);
    const std::uint64_t later = T0 + 60'000 * MS;
    CHECK(l.consume(1 << 20, TokenType::Bytes, later));
    CHECK_FALSE(l.consume(64 << 10, TokenType::Bytes, later));
    l.unblock();
    CHECK(l.consume(104857, TokenType::Bytes, later + 100 * MS)); // 0.1 s of 1 MiB/s, rounded down
    CHECK_FALSE(l.consume(1, TokenType::Bytes, later + 100 * MS));
}

TEST_CASE("rate limiter: 4 MiB in 1 MiB requests through a full 1 MiB/s bucket takes 3 s") {
    // The drive test's arithmetic with the 100 ms retries: the first MiB is the full bucket,
    // each later one waits for its refill.
    RateLimiter l({TokenBucketConfig{1 << 20, 0, 1000}, std::nullopt}, T0);
    std::uint64_t now = T0;
    int sent = 0;
    while (sent < 4) {
        if (l.consume(1 << 20, TokenType::Bytes, now)) {
            ++sent;
            continue;
        }
        const std::uint64_t wait = l.take_timer_ns();
        REQUIRE(wait == RateLimiter::RETRY_NS);
        now += wait;
        l.unblock();
    }
    CHECK(now - T0 >= 3000 * MS);
    CHECK(now - T0 <= 3100 * MS);
}

TEST_CASE("rate limiter: ops and bytes, and giving back") {
    RateLimiter l({TokenBucketConfig{100, 0, 1000}, TokenBucketConfig{2, 0, 1000}}, T0);
    CHECK(l.consume(1, TokenType::Ops, T0));
    CHECK(l.consume(1, TokenType::Ops, T0));
    l.replenish(1, TokenType::Ops);
    CHECK(l.consume(1, TokenType::Ops, T0));
    CHECK_FALSE(l.consume(1, TokenType::Ops, T0));
    CHECK(l.bandwidth()->budget() == 100); // the buckets are independent
}

TEST_CASE("rate limiter: updates replace, remove or keep each bucket") {
    RateLimiter l({TokenBucketConfig{100, 0, 1000}, TokenBucketConfig{10, 0, 1000}}, T0);
    REQUIRE(l.consume(60, TokenType::Bytes, T0));
    // Absent: unchanged, budget and all.
    l.update({}, T0);
    CHECK(l.bandwidth()->budget() == 40);
    CHECK(l.config() == RateLimiterConfig{TokenBucketConfig{100, 0, 1000}, TokenBucketConfig{10, 0, 1000}});
    // A new bucket starts full.
    l.update({TokenBucketConfig{500, 5, 100}, std::nullopt}, T0);
    CHECK(l.bandwidth()->budget() == 500);
    CHECK(l.bandwidth()->one_time_burst() == 5);
    CHECK(l.ops()->config().size == 10);
    // Size or refill_time 0 removes it; with none left, nothing is limited.
    l.update({TokenBucketConfig{0, 0, 0}, TokenBucketConfig{7, 0, 0}}, T0);
    CHECK_FALSE(l.bandwidth());
    CHECK_FALSE(l.ops());
    CHECK_FALSE(l.config());
    CHECK(l.consume(UINT64_MAX, TokenType::Bytes, T0));
    // A changing update ends a pending block at once (Firecracker keeps it until its timer),
    // here one of an hour's over-consumption; an empty update leaves it.
    RateLimiter b({TokenBucketConfig{1, 0, 1000}, std::nullopt}, T0);
    REQUIRE(b.consume(3601, TokenType::Bytes, T0));
    REQUIRE(b.take_timer_ns() == 3600'000 * MS);
    b.update({}, T0);
    CHECK_FALSE(b.consume(1, TokenType::Bytes, T0));
    b.update({TokenBucketConfig{0, 0, 0}, std::nullopt}, T0);
    CHECK_FALSE(b.blocked());
    CHECK(b.consume(1, TokenType::Bytes, T0));
    b.unblock(); // the old timer firing later changes nothing
    CHECK(b.consume(1, TokenType::Bytes, T0));
}

TEST_CASE("rate limiter: a default or all-zero limiter limits nothing") {
    RateLimiter none;
    CHECK(none.consume(UINT64_MAX, TokenType::Bytes, 0));
    RateLimiter zero({TokenBucketConfig{0, 100, 1000}, TokenBucketConfig{100, 0, 0}}, T0);
    CHECK_FALSE(zero.config());
    CHECK(zero.consume(UINT64_MAX, TokenType::Ops, T0));
    CHECK_FALSE(effective({TokenBucketConfig{0, 1, 1}, std::nullopt}));
    CHECK(effective({TokenBucketConfig{0, 1, 1}, TokenBucketConfig{1, 0, 1}}) ==
          RateLimiterConfig{std::nullopt, TokenBucketConfig{1, 0, 1}});
}

// ------------------------------------------------------------------------------------------
// JSON

namespace {
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "(no error)";
}
} // namespace

TEST_CASE("rate limiter JSON: Firecracker's TokenBucket") {
    CHECK(parse_token_bucket(json::parse(R"({"size": 1048576, "refill_time": 1000})"), "b") == TokenBucketConfig{1048576, 0, 1000});
    CHECK(parse_token_bucket(json::parse(R"({"size": 1, "one_time_burst": 9, "refill_time": 2})"), "b") == TokenBucketConfig{1, 9, 2});
    CHECK(parse_token_bucket(json::parse(R"({"size": 1, "one_time_burst": null, "refill_time": 2})"), "b") == TokenBucketConfig{1, 0, 2});
    CHECK(parse_token_bucket(json::parse(R"({"size": 18446744073709551615, "refill_time": 0})"), "b").size == UINT64_MAX);
    auto err = [](const char* text) { return error_of([&] { (void)parse_token_bucket(json::parse(text), "x.bandwidth"); }); };
    CHECK(err(R"({"refill_time": 1})") == "x.bandwidth: missing required field \"size\"");
    CHECK(err(R"({"size": 1})") == "x.bandwidth: missing required field \"refill_time\"");
    CHECK(err(R"({"size": null, "refill_time": 1})") == "x.bandwidth.size must be a non-negative integer, not a null");
    CHECK(err(R"({"size": -1, "refill_time": 1})") == "x.bandwidth.size must be a non-negative integer, not negative");
    CHECK(err(R"({"size": 1, "refill_time": 0.5})") == "x.bandwidth.refill_time must be a non-negative integer, not a number with a fraction");
    CHECK(err(R"({"size": 1, "refill_time": "1"})") == "x.bandwidth.refill_time must be a non-negative integer, not a string");
    CHECK(err(R"({"size": 1, "refill_time": 1, "one_time_burst": true})") ==
          "x.bandwidth.one_time_burst must be a non-negative integer, not a boolean");
    CHECK(err(R"({"size": 1, "refill_time": 1, "burst": 1})") == "x.bandwidth: unknown field \"burst\"");
    CHECK(err(R"([1, 2])") == "x.bandwidth must be a JSON object, not a array");
    CHECK(err(R"({"size": 1, "refill_time": 18446744073709552})").find("refill_time must be at most") != std::string::npos);
}

TEST_CASE("rate limiter JSON: Firecracker's RateLimiter, as configured") {
    CHECK_FALSE(parse_rate_limiter(json(nullptr), "r"));
    CHECK_FALSE(parse_rate_limiter(json::object(), "r"));
    CHECK_FALSE(parse_rate_limiter(json::parse(R"({"bandwidth": null, "ops": null})"), "r"));
    CHECK_FALSE(parse_rate_limiter(json::parse(R"({"bandwidth": {"size": 0, "refill_time": 100}})"), "r"));
    const auto c = parse_rate_limiter(json::parse(R"({"bandwidth": {"size": 1048576, "refill_time": 1000},
                                                        "ops": {"size": 0, "refill_time": 1}})"),
                                      "r");
    REQUIRE(c);
    CHECK(c->bandwidth == TokenBucketConfig{1048576, 0, 1000});
    CHECK_FALSE(c->ops); // limits nothing: dropped
    CHECK(error_of([] { (void)parse_rate_limiter(json::parse(R"({"bandwidth": {}, "iops": 1})"), "d.rate_limiter"); }) ==
          "d.rate_limiter: unknown field \"iops\"");
    CHECK(error_of([] { (void)parse_rate_limiter(json::parse(R"({"ops": {"size": 1}})"), "d.rate_limiter"); }) ==
          "d.rate_limiter.ops: missing required field \"refill_time\"");
    CHECK(error_of([] { (void)parse_rate_limiter(json("fast"), "d.rate_limiter"); }) ==
          "d.rate_limiter must be a JSON object or null, not a string");
}

TEST_CASE("rate limiter JSON: updates keep what is absent") {
    const RateLimiterUpdate none = parse_rate_limiter_update(nullptr, "u");
    CHECK_FALSE(none.bandwidth);
    CHECK_FALSE(none.ops);
    const json null_body(nullptr);
    CHECK_FALSE(parse_rate_limiter_update(&null_body, "u").bandwidth);
    const json body = json::parse(R"({"bandwidth": {"size": 0, "refill_time": 0}, "ops": {"size": 5, "refill_time": 10}})");
    const RateLimiterUpdate u = parse_rate_limiter_update(&body, "u");
    REQUIRE(u.bandwidth);
    CHECK_FALSE(u.bandwidth->limits()); // kept as given: it removes the bucket
    CHECK(u.ops == TokenBucketConfig{5, 0, 10});
    const json bad = json::parse(R"({"bandwidth": {"size": 1, "refill_time": -3}})");
    CHECK(error_of([&] { (void)parse_rate_limiter_update(&bad, "u"); }) == "u.bandwidth.refill_time must be a non-negative integer, not negative");
}

TEST_CASE("rate limiter JSON: rendering for GET /vm/config round-trips") {
    CHECK(to_json(std::optional<RateLimiterConfig>{}).is_null());
    const std::optional<RateLimiterConfig> c = RateLimiterConfig{TokenBucketConfig{1048576, 0, 1000}, TokenBucketConfig{10, 20, 30}};
    const json j = to_json(c);
    CHECK(j == json::parse(R"({"bandwidth": {"size": 1048576, "one_time_burst": null, "refill_time": 1000},
                               "ops": {"size": 10, "one_time_burst": 20, "refill_time": 30}})"));
    CHECK(parse_rate_limiter(j, "r") == c);
    // Through a drive and a network interface, as GET /vm/config shows them.
    DriveConfig d = parse_drive(json::parse(R"({"drive_id": "a", "path_on_host": "/a", "is_root_device": false,
                                                 "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}})"));
    CHECK(to_json(d)["rate_limiter"] == json::parse(R"({"bandwidth": null, "ops": {"size": 100, "one_time_burst": null, "refill_time": 1000}})"));
    NetConfig n = parse_net(json::parse(R"({"iface_id": "e", "host_dev_name": "tap0", "rx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}})"));
    CHECK(to_json(n)["rx_rate_limiter"]["bandwidth"]["size"] == 1);
    CHECK(to_json(n)["tx_rate_limiter"].is_null());
}
