// libFuzzer target: an EntropyDevice (virtio 1.2 §5.4) in a 64 KiB fake guest RAM, driven by a
// hostile driver: arbitrary descriptor tables and available rings (readable buffers, lengths up
// to 4 GiB, loops, indirect tables), notifications, device resets and configuration accesses.
// The random source is deterministic (a byte counter) or failing, so every run reproduces.
//
// Input layout:
//   byte 0  bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 the requestq left not ready, bit 3
//           misaligned descriptor table, bit 4 the host source fails (EAGAIN)
//   byte 1  bits 0-2 requestq size = 4 << n (512 exceeds the maximum of 256: activation fails)
//   byte 2  length of the driver script that follows (one byte per step)
//   then the script, then the initial RAM image (rings and buffers, from guest address 0).
// Script steps (op & 3): 0 notify the requestq; 1 the driver publishes (op >> 2) + 1 more
// entries; 2 device reset and a new initialisation; 3 a configuration read and write at offset
// (op >> 2) * 3.
//
// Invariants (besides no crash and no sanitizer report): every chain taken is returned at once,
// no request is served more than MAX_REQUEST_BYTES, a failing source serves no byte and counts
// one host failure per request it was asked for, the interrupt status holds only the two
// defined bits (§4.2.2), returned buffers raise a used-buffer interrupt unless the driver
// suppressed it (§2.7.7), and the configuration space reads 0 everywhere.

#include "devices/virtio/rng/device.hpp"
#include "virtio_fuzz_harness.hpp"

#include <boost/asio/io_context.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>

using namespace ember;
using namespace ember::fuzz;
using namespace ember::virtio;
using namespace ember::virtio::rng;

namespace {

// Room for 256 entries: 16 * 256 = 0x1000, 6 + 2 * 256, 6 + 8 * 256.
constexpr Rings kRings{0x0000, 0x1000, 0x1400};

class FuzzSource final : public EntropySource {
public:
    explicit FuzzSource(bool fails) : fails_(fails) {}
    int fill(std::span<std::byte> buf) noexcept override {
        if (fails_) return EAGAIN;
        for (auto& b : buf) b = static_cast<std::byte>(next_++);
        return 0;
    }

private:
    bool fails_;
    std::uint8_t next_ = 0;
};

class Harness {
public:
    Harness(const GuestMemory& mem, std::uint8_t flags, std::uint8_t sizes)
        : mem_(mem), flags_(flags), sizes_(sizes), dev_(mem, io_, EntropyConfig{}, std::make_unique<FuzzSource>((flags & 0x10) != 0)) {}

    void bring_up() {
        std::uint64_t want = 0;
        if (flags_ & 1) want |= bit(feature::RING_EVENT_IDX);
        if (flags_ & 2) want |= bit(feature::RING_INDIRECT_DESC);
        negotiate(dev_, want);
        program_queue(dev_.queues()[EntropyDevice::REQUESTQ], kRings, static_cast<std::uint16_t>(1u << (2 + (sizes_ & 7))),
                      !(flags_ & 4), (flags_ & 8) != 0);
        driver_ok(dev_);
        notify();
    }

    void notify() {
        const Queue& q = dev_.queues()[EntropyDevice::REQUESTQ];
        const std::uint16_t used_before = begin_used_check(dev_, EntropyDevice::REQUESTQ);
        const EntropyMetrics& m = dev_.metrics();
        const std::uint64_t events = m.entropy_event_count, bytes = m.entropy_bytes, host_fails = m.host_rng_fails;
        {
            std::lock_guard lk(dev_.mutex());
            if (dev_.running() && q.active()) dev_.process_queue(EntropyDevice::REQUESTQ);
        }
        const std::uint64_t served = m.entropy_event_count - events;
        check(served == static_cast<std::uint16_t>(q.state().next_used - used_before));
        check(m.entropy_bytes - bytes <= served * MAX_REQUEST_BYTES);
        if (flags_ & 0x10) {
            check(m.entropy_bytes == 0);
            check(m.host_rng_fails - host_fails <= served);
        } else {
            check(m.host_rng_fails == 0);
        }
        end_used_check(dev_, mem_, EntropyDevice::REQUESTQ, kRings, used_before);
    }

    void publish(unsigned n) { fuzz::publish(mem_, kRings, n); }

    void reset() {
        reset_device(dev_);
        bring_up();
    }

    void config(std::uint8_t op) {
        const auto off = static_cast<std::uint64_t>(op >> 2) * 3;
        std::uint8_t cfg[8];
        std::memset(cfg, 0xcc, sizeof cfg);
        const std::uint8_t junk[4] = {op, op, op, op};
        dev_.write_config(off, junk);
        dev_.read_config(off, cfg);
        for (std::uint8_t b : cfg) check(b == 0);
    }

    void after_step() {
        check_device(dev_);
        const EntropyMetrics& m = dev_.metrics();
        check(m.entropy_rate_limiter_throttled == 0 && m.rate_limiter_event_count == 0 && m.activate_fails == 0);
    }

private:
    const GuestMemory& mem_;
    std::uint8_t flags_, sizes_;
    boost::asio::io_context io_; // the rate limiter's timer; unused without a limiter
    EntropyDevice dev_;
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    quiet_logs();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in;
    if (!parse_input(data, size, in)) return 0;
    Harness h(*in.mem, in.flags, in.sizes);
    h.bring_up();
    h.after_step();
    for (const std::uint8_t op : in.script) {
        switch (op & 3) {
        case 0: h.notify(); break;
        case 1: h.publish(static_cast<unsigned>(op >> 2) + 1); break;
        case 2: h.reset(); break;
        case 3: h.config(op); break;
        }
        h.after_step();
    }
    return 0;
}
