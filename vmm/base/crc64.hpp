#pragma once
// CRC-64/XZ (ECMA-182 polynomial 0x42F0E1EBA9EA3693, reflected, init and final XOR all ones):
// the check value of "123456789" is 0x995DC9BBDF1939FA. Snapshot files end with it.

#include <cstddef>
#include <cstdint>
#include <span>

namespace ember {

// Continues a CRC over `data`; start with crc = 0. crc64(crc64(0, a), b) == crc64(0, a ++ b).
std::uint64_t crc64(std::uint64_t crc, std::span<const std::byte> data) noexcept;

} // namespace ember
