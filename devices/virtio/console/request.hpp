#pragma once
// virtio-console (virtio 1.2 §5.3) data handling as pure functions: the configuration space
// layout and what a transmit chain may look like. Unit-tested without a guest.

#include "devices/virtio/queue.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <sys/uio.h>
#include <vector>

namespace ember::virtio::console {

// §5.3.3 feature bits.
inline constexpr unsigned F_SIZE = 0;
inline constexpr unsigned F_MULTIPORT = 1;
inline constexpr unsigned F_EMERG_WRITE = 2;

// struct virtio_console_config (§5.3.4): cols, rows (valid with F_SIZE), max_nr_ports (with
// F_MULTIPORT), emerg_wr (with F_EMERG_WRITE). Little-endian.
inline constexpr std::size_t CONFIG_SIZE = 12;
struct ConsoleSize {
    std::uint16_t cols = 0;
    std::uint16_t rows = 0;
    bool operator==(const ConsoleSize&) const = default;
};
// Reads `data.size()` bytes at `offset` of the configuration space; bytes past its end read 0.
void read_config(const ConsoleSize& size, std::uint64_t offset, std::span<std::uint8_t> data) noexcept;

enum class TxError {
    None,
    DeviceWritable, // a transmit buffer the device would write to (§5.3.6.1: driver-to-device only)
};
const char* to_string(TxError e) noexcept;

// Checks a transmitq chain and gathers its bytes into `iov` (zero-length buffers skipped);
// `total` is their sum.
TxError gather_output(std::span<const Descriptor> chain, std::vector<iovec>& iov, std::size_t& total) noexcept;

} // namespace ember::virtio::console
