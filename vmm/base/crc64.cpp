#include "vmm/base/crc64.hpp"

#include <array>

namespace ember {
namespace {

constexpr std::uint64_t kReflectedPoly = 0xC96C5795D7870F42ULL;

constexpr std::array<std::uint64_t, 256> make_table() noexcept {
    std::array<std::uint64_t, 256> t{};
    for (std::uint64_t i = 0; i < 256; ++i) {
        std::uint64_t c = i;
        for (int bit = 0; bit < 8; ++bit) c = (c & 1) != 0 ? (c >> 1) ^ kReflectedPoly : c >> 1;
        t[i] = c;
    }
    return t;
}
constexpr auto kTable = make_table();

} // namespace

std::uint64_t crc64(std::uint64_t crc, std::span<const std::byte> data) noexcept {
    crc = ~crc;
    for (std::byte b : data) crc = kTable[(crc ^ std::to_integer<std::uint64_t>(b)) & 0xff] ^ (crc >> 8);
    return ~crc;
}

} // namespace ember
