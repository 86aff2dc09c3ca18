#include "devices/virtio/console/request.hpp"

#include <algorithm>
#include <cstring>

namespace ember::virtio::console {

void read_config(const ConsoleSize& size, std::uint64_t offset, std::span<std::uint8_t> data) noexcept {
    std::uint8_t c[CONFIG_SIZE] = {};
    std::memcpy(c, &size.cols, 2);
    std::memcpy(c + 2, &size.rows, 2);
    const std::uint32_t max_nr_ports = 1;
    std::memcpy(c + 4, &max_nr_ports, 4);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = offset < CONFIG_SIZE && i < CONFIG_SIZE - offset ? c[offset + i] : 0;
}

const char* to_string(TxError e) noexcept {
    switch (e) {
    case TxError::None: return "none";
    case TxError::DeviceWritable: return "device-writable buffer in a transmit chain";
    }
    return "?";
}

TxError gather_output(std::span<const Descriptor> chain, std::vector<iovec>& iov, std::size_t& total) noexcept {
    iov.clear();
    total = 0;
    for (const auto& d : chain) {
        if (d.device_writable) {
            iov.clear();
            total = 0;
            return TxError::DeviceWritable;
        }
        if (d.len == 0) continue;
        iov.push_back(iovec{d.host, d.len});
        total += d.len;
    }
    return TxError::None;
}

} // namespace ember::virtio::console
