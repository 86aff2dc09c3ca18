// libFuzzer target: a BalloonDevice (virtio 1.2 §5.5) in a 128 KiB fake guest RAM, driven by a
// hostile driver: arbitrary descriptor tables and available rings on all five queues (inflate,
// deflate, stats, free-page hinting, reporting), PFNs anywhere, notifications, device resets,
// configuration accesses, and the API's calls (target, stats update, hinting start/stop).
//
// Input layout:
//   byte 0  bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 statistics, bit 3 hinting, bit 4
//           reporting, bit 5 the driver leaves STATS_VQ out, bit 6 the last queue not ready
//   byte 1  bits 0-2 queue size = 4 << n (512 exceeds the maximum of 256: activation fails)
//   byte 2  length of the driver script that follows (one byte per step)
//   then the script, then the initial RAM image (rings and buffers, from guest address 0).
// Script steps (op & 7): 0 notify queue (op >> 3) % n; 1 publish (op >> 5) + 1 entries on queue
// (op >> 3) & 3; 2 device reset and a new initialisation; 3 a configuration read and write at
// offset (op >> 3) * 2; 4 the stats timer fires; 5 a new target of (op >> 3) MiB; 6 a hinting
// run starts (ack on stop: op bit 3); 7 hinting stops.
//
// Invariants (besides no crash and no sanitizer report): every chain taken is returned at once
// except the one stats buffer the device holds; an inflate chain gives back at most 256 pages;
// the interrupt status holds only the two defined bits (§4.2.2); num_pages reads what the host
// set; the hint command id is STOP, DONE or a run id the host issued.

#include "devices/virtio/balloon/device.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/logger.hpp"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::balloon;

namespace {

constexpr std::uint64_t kRam = 128 * 1024;
constexpr std::uint64_t kQueueArea = 0x2000; // per queue: desc 0x1000, avail 0x1000 + 0x208, used 0x1400 + 0x808

void check(bool ok) {
    if (!ok) std::abort();
}

BalloonConfig config_of(std::uint8_t flags) {
    BalloonConfig c;
    c.amount_mib = 1;
    c.deflate_on_oom = true;
    c.stats_polling_interval_s = (flags & 4) ? 1 : 0;
    c.free_page_hinting = (flags & 8) != 0;
    c.free_page_reporting = (flags & 0x10) != 0;
    return c;
}

class Harness {
public:
    Harness(const GuestMemory& mem, std::uint8_t flags, std::uint8_t sizes)
        : mem_(mem), flags_(flags), sizes_(sizes), dev_(mem, io_, config_of(flags)) {}

    void bring_up() {
        check(dev_.write_status(status::ACKNOWLEDGE));
        check(dev_.write_status(status::ACKNOWLEDGE | status::DRIVER));
        std::uint64_t want = dev_.offered_features();
        if (!(flags_ & 1)) want &= ~bit(virtio::feature::RING_EVENT_IDX);
        if (!(flags_ & 2)) want &= ~bit(virtio::feature::RING_INDIRECT_DESC);
        if (flags_ & 0x20) want &= ~bit(balloon::feature::STATS_VQ);
        check(dev_.write_driver_features(0, static_cast<std::uint32_t>(want)));
        check(dev_.write_driver_features(1, static_cast<std::uint32_t>(want >> 32)));
        check(dev_.write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        const std::size_t n = dev_.queues().size();
        for (std::size_t i = 0; i < n; ++i) {
            Queue& q = dev_.queues()[i];
            const std::uint64_t base = kQueueArea * i;
            q.set_size(static_cast<std::uint16_t>(1u << (2 + (sizes_ & 7))));
            q.set_desc_addr(base, false);
            q.set_desc_addr(0, true);
            q.set_avail_addr(base + 0x1000, false);
            q.set_avail_addr(0, true);
            q.set_used_addr(base + 0x1400, false);
            q.set_used_addr(0, true);
            q.set_ready(!((flags_ & 0x40) && i + 1 == n));
        }
        check(dev_.write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
        const bool needs_reset = (dev_.state().status & status::DEVICE_NEEDS_RESET) != 0;
        check(dev_.running() != needs_reset);
    }

    void notify(std::size_t qi) {
        const std::uint64_t inflated = dev_.inflated_pages();
        const std::uint64_t inflates = dev_.metrics().inflate_count;
        const Queue& q = dev_.queues()[qi];
        const std::uint16_t used_before = q.state().next_used;
        {
            std::lock_guard lk(dev_.mutex());
            if (dev_.running() && q.active()) dev_.process_queue(qi);
        }
        if (dev_.role(qi) == BalloonDevice::Role::Inflate && dev_.metrics().inflate_count != inflates) {
            const auto chains = static_cast<std::uint16_t>(q.state().next_used - used_before);
            check(dev_.inflated_pages() - inflated <= std::uint64_t{chains} * MAX_PFNS_PER_CHAIN);
        }
    }

    void publish(std::size_t qi, unsigned n) {
        const std::uint64_t a = kQueueArea * qi + 0x1000 + 2;
        write16(a, static_cast<std::uint16_t>(read16(a) + n));
    }

    void reset() {
        check(dev_.write_status(0));
        check(dev_.state().status == 0 && dev_.interrupt_status() == 0);
        for (auto& q : dev_.queues()) check(!q.active());
        bring_up();
    }

    void config(std::uint8_t op) {
        const auto off = static_cast<std::uint64_t>(op >> 3) * 2;
        std::uint8_t cfg[8];
        const std::uint8_t junk[4] = {op, op, op, op};
        dev_.write_config(off, junk);
        dev_.read_config(off, cfg);
        std::uint8_t whole[16];
        dev_.read_config(0, whole);
        std::uint32_t num_pages = 0, cmd = 0;
        std::memcpy(&num_pages, whole, 4);
        std::memcpy(&cmd, whole + 8, 4);
        check(num_pages == target_mib_ * PAGES_PER_MIB);
        check(cmd == CMD_ID_STOP || cmd == CMD_ID_DONE || (cmd >= CMD_ID_FIRST && cmd <= last_run_));
    }

    void timer() {
        std::lock_guard lk(dev_.mutex());
        dev_.trigger_stats_update();
    }
    void target(std::uint32_t mib) {
        dev_.set_target_mib(mib);
        target_mib_ = mib;
    }
    void start_hinting(bool ack) {
        dev_.start_hinting(ack);
        last_run_ = dev_.hinting_status().host_cmd;
    }
    void stop_hinting() { dev_.stop_hinting(); }

    void after_step() {
        for (std::size_t i = 0; i < dev_.queues().size(); ++i)
            check(dev_.queues()[i].pending() <= (dev_.role(i) == BalloonDevice::Role::Stats ? 1 : 0));
        check((dev_.interrupt_status() & ~(INT_USED_RING | INT_CONFIG)) == 0);
        if (dev_.state().status & status::DEVICE_NEEDS_RESET) check(!dev_.running());
    }

    std::size_t queue_count() const { return const_cast<BalloonDevice&>(dev_).queues().size(); }

private:
    std::uint16_t read16(std::uint64_t a) const {
        std::uint16_t v = 0;
        check(mem_.read_obj(GuestAddr(a), v));
        return v;
    }
    void write16(std::uint64_t a, std::uint16_t v) const { check(mem_.write_obj(GuestAddr(a), v)); }

    boost::asio::io_context io_;
    const GuestMemory& mem_;
    std::uint8_t flags_, sizes_;
    BalloonDevice dev_; // not owned by a shared_ptr: the stats timer is never armed
    std::uint32_t target_mib_ = 1;
    std::uint32_t last_run_ = 0;
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    log::Options o;
    o.level = log::Level::Off;
    log::configure(o);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 3) return 0;
    static const GuestMemory mem = GuestMemory::with_regions({{GuestAddr(0), kRam}});
    std::byte* ram = mem.regions().front().host;

    const std::uint8_t flags = data[0], sizes = data[1];
    const std::size_t script_len = std::min<std::size_t>(data[2], size - 3);
    const std::uint8_t* script = data + 3;
    const std::uint8_t* image = script + script_len;
    const std::size_t image_len = std::min<std::size_t>(size - 3 - script_len, kRam);
    std::memset(ram, 0, kRam);
    if (image_len) std::memcpy(ram, image, image_len);

    Harness h(mem, flags, sizes);
    h.bring_up();
    h.after_step();
    const std::size_t n = h.queue_count();
    for (std::size_t i = 0; i < script_len; ++i) {
        const std::uint8_t op = script[i];
        switch (op & 7) {
        case 0: h.notify(static_cast<std::size_t>(op >> 3) % n); break;
        case 1: h.publish(static_cast<std::size_t>((op >> 3) & 3) % n, static_cast<unsigned>(op >> 5) + 1); break;
        case 2: h.reset(); break;
        case 3: h.config(op); break;
        case 4: h.timer(); break;
        case 5: h.target(op >> 3); break;
        case 6: h.start_hinting((op & 8) != 0); break;
        case 7: h.stop_hinting(); break;
        }
        h.after_step();
    }
    return 0;
}
