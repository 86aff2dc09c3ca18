#pragma once
// An Ethernet MAC address as a value: parsed once from "aa:bb:cc:dd:ee:ff" where it enters Ember
// (configuration, API), rendered back for GET /vm/config, and handed to virtio-net as bytes.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ember {

class MacAddr {
public:
    using Bytes = std::array<std::uint8_t, 6>;
    constexpr MacAddr() noexcept = default;
    constexpr explicit MacAddr(const Bytes& b) noexcept : b_(b) {}

    // Six colon-separated hex pairs, either case. Refuses anything else, and a multicast address
    // (bit 0 of the first byte), which no NIC may own (virtio 1.2 §5.1.4: mac is the device's
    // unicast address).
    static std::optional<MacAddr> parse(std::string_view text) noexcept;
    // Lower-case "aa:bb:cc:dd:ee:ff".
    std::string to_string() const;
    const Bytes& bytes() const noexcept { return b_; }
    constexpr bool operator==(const MacAddr&) const noexcept = default;

private:
    Bytes b_{};
};

} // namespace ember
