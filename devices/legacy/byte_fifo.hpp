#pragma once
// A bounded FIFO of bytes that is a plain value (trivially copyable, no pointers), so a device
// State can hold it and saving it is a copy. A FIFO that comes from outside (a snapshot) may be
// anything: check valid() before using it.

#include <array>
#include <cstddef>
#include <cstdint>

namespace ember {

template <std::size_t N>
struct ByteFifo {
    static_assert(N > 0 && N <= 255, "head and count are bytes");
    std::array<std::uint8_t, N> buf{};
    std::uint8_t head = 0;  // index of the oldest byte
    std::uint8_t count = 0; // bytes held, from head on (wrapping)

    static constexpr std::size_t capacity() noexcept { return N; }
    bool valid() const noexcept { return head < N && count <= N; }
    bool empty() const noexcept { return count == 0; }
    std::size_t size() const noexcept { return count; }
    std::size_t room() const noexcept { return N - count; }
    // Precondition (all below): valid(); front() and pop_front() also !empty().
    std::uint8_t front() const noexcept { return buf[head]; }
    bool push_back(std::uint8_t b) noexcept {
        if (count == N) return false;
        buf[(head + count) % N] = b;
        ++count;
        return true;
    }
    std::uint8_t pop_front() noexcept {
        const std::uint8_t b = buf[head];
        head = static_cast<std::uint8_t>((head + 1) % N);
        --count;
        return b;
    }
    void clear() noexcept { head = count = 0; }
    // The same bytes in the same order; where they sit in buf does not matter.
    friend bool operator==(const ByteFifo& a, const ByteFifo& b) noexcept {
        if (a.count != b.count) return false;
        for (std::size_t i = 0; i < a.count; ++i)
            if (a.buf[(a.head + i) % N] != b.buf[(b.head + i) % N]) return false;
        return true;
    }
};

} // namespace ember
