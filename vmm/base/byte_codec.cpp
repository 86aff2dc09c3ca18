#include "vmm/base/byte_codec.hpp"

namespace ember {

void ByteWriter::string(std::string_view s) {
    u32(static_cast<std::uint32_t>(s.size()));
    raw(std::as_bytes(std::span(s.data(), s.size())));
}

void ByteReader::fail(const char* field, const std::string& message) const {
    throw FormatError(what_ + ": " + field + " " + message + " (at byte " + std::to_string(pos_) + ")");
}

std::uint64_t ByteReader::le(const char* field, int n) {
    const auto b = raw(field, static_cast<std::size_t>(n));
    std::uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= std::to_integer<std::uint64_t>(b[static_cast<std::size_t>(i)]) << (8 * i);
    return v;
}

bool ByteReader::boolean(const char* field) {
    const std::uint8_t v = u8(field);
    if (v > 1) fail(field, "is " + std::to_string(v) + ", not a boolean");
    return v == 1;
}

std::span<const std::byte> ByteReader::raw(const char* field, std::size_t n) {
    if (n > remaining()) fail(field, "is cut short: the input is truncated");
    const auto s = in_.subspan(pos_, n);
    pos_ += n;
    return s;
}

std::string ByteReader::string(const char* field, std::size_t max_len) {
    const std::size_t n = count(field, max_len, 1);
    const auto b = raw(field, n);
    return std::string(reinterpret_cast<const char*>(b.data()), n);
}

std::size_t ByteReader::count(const char* field, std::size_t max_count, std::size_t min_element_bytes) {
    const std::uint32_t n = u32(field);
    if (n > max_count) fail(field, "count " + std::to_string(n) + " exceeds the limit of " + std::to_string(max_count));
    if (min_element_bytes != 0 && n > remaining() / min_element_bytes) fail(field, "count " + std::to_string(n) + " runs past the end of the input");
    return n;
}

void ByteReader::check_size(const char* field, std::uint32_t got, std::size_t want) const {
    if (got != want)
        fail(field, "has " + std::to_string(got) + "-byte records; this Ember's are " + std::to_string(want) +
                        " bytes (written by an incompatible build)");
}

} // namespace ember
