#include "vmm/base/mac_addr.hpp"

#include <cstdio>

namespace ember {

std::optional<MacAddr> MacAddr::parse(std::string_view text) noexcept {
    if (text.size() != 17) return std::nullopt;
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    Bytes out{};
    for (std::size_t i = 0; i < out.size(); ++i) {
        const int hi = hex(text[3 * i]), lo = hex(text[3 * i + 1]);
        if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) return std::nullopt;
        out[i] = static_cast<std::uint8_t>(hi * 16 + lo);
    }
    if (out[0] & 1) return std::nullopt;
    return MacAddr(out);
}

std::string MacAddr::to_string() const {
    char buf[18];
    std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", b_[0], b_[1], b_[2], b_[3], b_[4], b_[5]);
    return buf;
}

} // namespace ember
