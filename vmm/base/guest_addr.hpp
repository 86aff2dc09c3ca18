#pragma once
// Strong types for guest-physical addresses (after L4Re uvmm's mem_types.h): a GuestAddr never
// mixes with a host pointer or a plain length by accident, and range arithmetic that would wrap
// around 2^64 is reported instead of performed.

#include <compare>
#include <cstdint>
#include <optional>

namespace ember {

class GuestAddr {
public:
    constexpr GuestAddr() noexcept = default;
    constexpr explicit GuestAddr(std::uint64_t v) noexcept : v_(v) {}
    constexpr std::uint64_t raw() const noexcept { return v_; }

    // a + off, or nullopt when it wraps past 2^64.
    constexpr std::optional<GuestAddr> checked_add(std::uint64_t off) const noexcept {
        if (off > UINT64_MAX - v_) return std::nullopt;
        return GuestAddr(v_ + off);
    }
    // Unchecked offset for constants known not to wrap (layout addresses).
    constexpr GuestAddr operator+(std::uint64_t off) const noexcept { return GuestAddr(v_ + off); }
    constexpr std::uint64_t operator-(GuestAddr o) const noexcept { return v_ - o.v_; }
    constexpr auto operator<=>(const GuestAddr&) const noexcept = default;

private:
    std::uint64_t v_ = 0;
};

// A half-open range [start, start + size) of guest-physical addresses. Invariant: the end does
// not wrap (start + size <= 2^64), enforced by make().
class GuestRange {
public:
    constexpr GuestRange() noexcept = default;
    static constexpr std::optional<GuestRange> make(GuestAddr start, std::uint64_t size) noexcept {
        if (size != 0 && size - 1 > UINT64_MAX - start.raw()) return std::nullopt;
        return GuestRange(start, size);
    }
    constexpr GuestAddr start() const noexcept { return start_; }
    constexpr std::uint64_t size() const noexcept { return size_; }
    // The last byte of a non-empty range; compare with it rather than with an exclusive end,
    // which would be 2^64 for a range that reaches the top of the address space.
    constexpr std::uint64_t last() const noexcept { return start_.raw() + size_ - 1; }
    constexpr bool contains(GuestAddr a) const noexcept {
        return size_ != 0 && a >= start_ && a.raw() <= last();
    }
    constexpr bool contains(const GuestRange& r) const noexcept {
        if (r.size_ == 0) return contains(r.start_) || r.start_.raw() == start_.raw() + size_;
        return contains(r.start_) && r.last() <= last();
    }
    constexpr bool overlaps(const GuestRange& r) const noexcept {
        return size_ != 0 && r.size_ != 0 && r.start_.raw() <= last() && start_.raw() <= r.last();
    }

private:
    constexpr GuestRange(GuestAddr s, std::uint64_t n) noexcept : start_(s), size_(n) {}
    GuestAddr start_{};
    std::uint64_t size_ = 0;
};

} // namespace ember
