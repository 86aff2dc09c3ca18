#pragma once
// What the virtio device fuzz targets share: a 64 KiB fake guest RAM loaded from the input, the
// common input layout, the driver's initialisation steps (§3.1.1) and queue programming, and
// the used-buffer interrupt invariant (§2.7.7). Header-only: each target is its own program.

#include "devices/virtio/device.hpp"
#include "devices/virtio/queue.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

namespace ember::fuzz {

inline constexpr std::uint64_t kRam = 64 * 1024;

inline void check(bool ok) {
    if (!ok) std::abort();
}

// Broken rings are logged as warnings; at fuzzing rates that is noise.
inline void quiet_logs() {
    log::Options o;
    o.level = log::Level::Off;
    log::configure(o);
}

// The fuzz RAM (one region at guest address 0, made once per process), zeroed and then loaded
// with the first kRam bytes of `image`.
inline const GuestMemory& load_ram(std::span<const std::uint8_t> image) {
    static const GuestMemory mem = GuestMemory::with_regions({{GuestAddr(0), kRam}});
    std::byte* ram = mem.regions().front().host;
    std::memset(ram, 0, kRam);
    const std::size_t n = std::min<std::size_t>(image.size(), kRam);
    if (n) std::memcpy(ram, image.data(), n);
    return mem;
}

// The layout of the device targets' inputs: byte 0 flags, byte 1 sizes, byte 2 the length of
// the driver script that follows (one byte per step, cut to what the input has), then the
// initial RAM image (rings and buffers, from guest address 0), loaded by parse_input.
struct Input {
    std::uint8_t flags = 0, sizes = 0;
    std::span<const std::uint8_t> script;
    const GuestMemory* mem = nullptr;
};
// False for an input too short to hold the three header bytes.
inline bool parse_input(const std::uint8_t* data, std::size_t size, Input& in) {
    if (size < 3) return false;
    in.flags = data[0];
    in.sizes = data[1];
    const std::size_t script_len = std::min<std::size_t>(data[2], size - 3);
    in.script = std::span(data + 3, script_len);
    in.mem = &load_ram(std::span(data + 3 + script_len, size - 3 - script_len));
    return true;
}

// The driver's initialisation up to FEATURES_OK (§3.1.1): VERSION_1 plus `want`, as far as the
// device offers them.
inline void negotiate(virtio::VirtioDevice& dev, std::uint64_t want) {
    using namespace virtio;
    check(dev.write_status(status::ACKNOWLEDGE));
    check(dev.write_status(status::ACKNOWLEDGE | status::DRIVER));
    want = (want | bit(feature::VERSION_1)) & dev.offered_features();
    check(dev.write_driver_features(0, static_cast<std::uint32_t>(want)));
    check(dev.write_driver_features(1, static_cast<std::uint32_t>(want >> 32)));
    check(dev.write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
}

// DRIVER_OK: a queue that failed activation fails the device (§2.1.2); otherwise it runs.
inline void driver_ok(virtio::VirtioDevice& dev) {
    using namespace virtio;
    check(dev.write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
    const bool needs_reset = (dev.state().status & status::DEVICE_NEEDS_RESET) != 0;
    check(dev.running() != needs_reset);
}

// Ring addresses of one queue.
struct Rings {
    std::uint64_t desc, avail, used;
};

// The driver programs a queue; `misaligned` moves the descriptor table off its 16-byte alignment.
inline void program_queue(virtio::Queue& q, const Rings& r, std::uint16_t size, bool ready, bool misaligned) {
    q.set_size(size);
    q.set_desc_addr(r.desc + (misaligned ? 8 : 0), false);
    q.set_desc_addr(0, true);
    q.set_avail_addr(r.avail, false);
    q.set_avail_addr(0, true);
    q.set_used_addr(r.used, false);
    q.set_used_addr(0, true);
    q.set_ready(ready);
}

inline std::uint16_t read16(const GuestMemory& mem, std::uint64_t a) {
    std::uint16_t v = 0;
    check(mem.read_obj(GuestAddr(a), v));
    return v;
}
inline void write16(const GuestMemory& mem, std::uint64_t a, std::uint16_t v) { check(mem.write_obj(GuestAddr(a), v)); }

// The driver publishes `n` more available entries.
inline void publish(const GuestMemory& mem, const Rings& r, unsigned n) {
    write16(mem, r.avail + 2, static_cast<std::uint16_t>(read16(mem, r.avail + 2) + n));
}

// §2.7.7: without EVENT_IDX, returning buffers raises a used-buffer interrupt unless the driver
// set VIRTQ_AVAIL_F_NO_INTERRUPT (a device that needs a reset is exempt). begin_used_check
// acknowledges the interrupt and returns the used index to pass to end_used_check.
inline std::uint16_t begin_used_check(virtio::VirtioDevice& dev, std::size_t q) {
    dev.ack_interrupt(virtio::INT_USED_RING);
    return dev.queues()[q].state().next_used;
}
inline void end_used_check(virtio::VirtioDevice& dev, const GuestMemory& mem, std::size_t q, const Rings& r,
                           std::uint16_t used_before) {
    using namespace virtio;
    const Queue& queue = dev.queues()[q];
    if (!queue.active() || queue.state().event_idx || queue.state().next_used == used_before) return;
    if ((dev.state().status & status::DEVICE_NEEDS_RESET) || (read16(mem, r.avail) & AVAIL_F_NO_INTERRUPT)) return;
    check((dev.interrupt_status() & INT_USED_RING) != 0);
}

// The driver resets the device (status 0): nothing of the old state is left.
inline void reset_device(virtio::VirtioDevice& dev) {
    check(dev.write_status(0));
    check(dev.state().status == 0 && dev.interrupt_status() == 0);
    for (auto& q : dev.queues()) check(!q.active());
}

// After every step: every chain taken was returned, the interrupt status holds only the two
// defined bits (§4.2.2), and a device that needs a reset serves nothing.
inline void check_device(virtio::VirtioDevice& dev) {
    using namespace virtio;
    for (auto& q : dev.queues()) check(q.pending() == 0);
    check((dev.interrupt_status() & ~(INT_USED_RING | INT_CONFIG)) == 0);
    if (dev.state().status & status::DEVICE_NEEDS_RESET) check(!dev.running());
}

} // namespace ember::fuzz
