// libFuzzer target: a ConsoleDevice (virtio 1.2 §5.3) in a 64 KiB fake guest RAM, driven by a
// hostile driver: arbitrary descriptor tables and available rings, notifications of either
// queue, host input, terminal resizes and device resets, with the output going to /dev/null or to
// a pipe whose reader lags.
//
// Input layout:
//   byte 0  bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 the device has a terminal size, bit 3 the
//           driver accepts F_SIZE, bit 4 both queues share one set of rings, bit 5 output to a
//           pipe (else /dev/null), bit 6 receiveq0 left not ready, bit 7 transmitq0 left not ready
//   byte 1  bits 0-2 receiveq0 size = 1 << n, bits 3-5 transmitq0 size = 1 << n (128 exceeds
//           the maximum of 64: activation fails), bit 6 a 64-byte output buffer (else 4096),
//           bit 7 misaligned transmitq0 descriptor table
//   byte 2  length of the driver script that follows (one byte per step)
//   then the script, then the initial RAM image (rings and buffers, from guest address 0).
// Script steps (op & 7): 0 notify transmitq0; 1 notify receiveq0; 2 host input of
// (op >> 3) * 7 + 1 bytes; 3 / 4 the driver publishes (op >> 3) + 1 more receiveq0 / transmitq0
// entries; 5 terminal resize; 6 device reset and a new initialisation; 7 the host reader takes
// (op >> 3) * 512 bytes and the event loop runs, then a configuration read at offset op >> 3.
// Notifications reach the device only while it runs and the queue is active, as through the
// MMIO transport.
//
// Invariants (besides no crash and no sanitizer report): every chain taken is returned at once
// (vmm/base/console_output.hpp: Linux's hvc spins until it is), the transmitted byte count equals
// what the output wrote, dropped or buffered, input is accepted only by a running device and
// never more than offered, the output buffer stays within its bound, interrupt status holds
// only the two defined bits (§4.2.2), returned buffers raise a used-buffer interrupt unless the
// driver suppressed it (§2.7.7), configuration bytes past the 12-byte structure read 0, and
// resize() raises a configuration change exactly when the size changes on a running
// device that negotiated F_SIZE.

#include "vmm/base/console_output.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/console/request.hpp"
#include "virtio_fuzz_harness.hpp"
#include "vmm/base/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <optional>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::fuzz;
using namespace ember::virtio;
using namespace ember::virtio::console;

namespace {

// Ring addresses of one queue; room for 64 entries each (§2.7: 16 * n, 6 + 2 * n, 6 + 8 * n).
constexpr Rings kRxRings{0x0000, 0x0400, 0x0500};
constexpr Rings kTxRings{0x0800, 0x0c00, 0x0d00};

class Harness {
public:
    Harness(const GuestMemory& mem, std::uint8_t flags, std::uint8_t sizes)
        : mem_(mem), flags_(flags), sizes_(sizes), capacity_((sizes & 0x40) ? std::size_t{64} : std::size_t{4096}),
          out_(std::make_shared<ConsoleOutput>(io_, open_output(), capacity_)),
          dev_(mem, out_, (flags & 4) ? std::optional<ConsoleSize>(ConsoleSize{80, 24}) : std::nullopt) {
        if (flags & 4) size_ = ConsoleSize{80, 24};
    }
    Harness(const Harness&) = delete;
    Harness& operator=(const Harness&) = delete;

    // The driver's initialisation (§3.1.1), then the notifications DRIVER_OK raises.
    void bring_up() {
        std::uint64_t want = 0;
        if (flags_ & 1) want |= bit(feature::RING_EVENT_IDX);
        if (flags_ & 2) want |= bit(feature::RING_INDIRECT_DESC);
        if (flags_ & 8) want |= bit(F_SIZE);
        negotiate(dev_, want);
        check(dev_.state().status == (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        check(dev_.queue_config_writable());
        program_queue(dev_.queues()[ConsoleDevice::RX], kRxRings, static_cast<std::uint16_t>(1u << (sizes_ & 7)), !(flags_ & 0x40),
                      false);
        program_queue(dev_.queues()[ConsoleDevice::TX], (flags_ & 0x10) ? kRxRings : kTxRings,
                      static_cast<std::uint16_t>(1u << ((sizes_ >> 3) & 7)), !(flags_ & 0x80), (sizes_ & 0x80) != 0);
        driver_ok(dev_);
        for (std::size_t q = 0; q < 2; ++q) notify(q);
        after_step();
    }

    void notify(std::size_t q) {
        const std::uint16_t used = begin_used_check(dev_, q);
        {
            std::lock_guard lk(dev_.mutex());
            if (dev_.running() && dev_.queues()[q].active()) dev_.process_queue(q);
        }
        end_used_check(dev_, mem_, q, rings_of(q), used);
    }

    void input(std::size_t n) {
        std::vector<std::uint8_t> bytes(n);
        for (auto& b : bytes) b = static_cast<std::uint8_t>(input_seq_++);
        const bool was_running = dev_.running();
        const std::uint16_t used = begin_used_check(dev_, ConsoleDevice::RX);
        std::size_t taken = 0;
        {
            std::lock_guard lk(dev_.mutex());
            taken = dev_.enqueue_input(bytes);
        }
        end_used_check(dev_, mem_, ConsoleDevice::RX, rings_of(ConsoleDevice::RX), used);
        check(taken <= n);
        check(was_running || taken == 0);
        input_taken_ += taken;
    }

    void publish(std::size_t q, unsigned n) { fuzz::publish(mem_, rings_of(q), n); }

    void resize(std::uint8_t op) {
        const ConsoleSize s{static_cast<std::uint16_t>(80 + (op >> 6)), static_cast<std::uint16_t>(24 + ((op >> 3) & 7))};
        const std::uint32_t gen = dev_.state().config_generation;
        const bool expect_change = size_ && *size_ != s && dev_.running() && (dev_.state().acked_features & bit(F_SIZE)) != 0;
        {
            std::lock_guard lk(dev_.mutex());
            dev_.resize(s);
        }
        if (size_) size_ = s;
        check(dev_.state().config_generation == gen + (expect_change ? 1u : 0u));
        if (expect_change) check((dev_.interrupt_status() & INT_CONFIG) != 0);
    }

    void reset() {
        reset_device(dev_);
        bring_up();
    }

    void host(std::uint8_t op) {
        if (reader_.valid()) {
            std::uint8_t buf[512];
            for (unsigned i = 0; i < static_cast<unsigned>(op >> 3); ++i)
                if (::read(reader_.get(), buf, sizeof buf) <= 0) break;
        }
        if (io_.stopped()) io_.restart();
        io_.poll();
        std::uint8_t cfg[16];
        std::memset(cfg, 0xcc, sizeof cfg);
        const auto off = static_cast<std::uint64_t>(op >> 3);
        dev_.read_config(off, cfg);
        for (std::size_t i = 0; i < sizeof cfg; ++i)
            if (off + i >= CONFIG_SIZE) check(cfg[i] == 0);
        if (off == 0) {
            const ConsoleSize shown{static_cast<std::uint16_t>(cfg[0] | cfg[1] << 8), static_cast<std::uint16_t>(cfg[2] | cfg[3] << 8)};
            check(shown == size_.value_or(ConsoleSize{}));
            check(cfg[4] == 1 && cfg[5] == 0 && cfg[6] == 0 && cfg[7] == 0);
        }
    }

    void after_step() {
        check_device(dev_);
        const ConsoleMetrics& m = dev_.metrics();
        const OutputMetrics& o = out_->metrics();
        const std::size_t buffered = out_->buffered();
        check(buffered <= capacity_);
        check(o.bytes_written + o.bytes_dropped + buffered == m.tx_bytes_count);
        check(o.write_fails == 0);
        check(m.rx_bytes_count == input_taken_);
    }

private:
    UniqueFd open_output() {
        if (flags_ & 0x20) {
            int fds[2];
            check(::pipe2(fds, O_CLOEXEC) == 0);
            reader_.reset(fds[0]);
            check(::fcntl(fds[0], F_SETFL, O_NONBLOCK) == 0);
            (void)::fcntl(fds[0], F_SETPIPE_SZ, 4096);
            return UniqueFd(fds[1]);
        }
        const int fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
        check(fd >= 0);
        return UniqueFd(fd);
    }

    const Rings& rings_of(std::size_t q) const { return q == ConsoleDevice::TX && !(flags_ & 0x10) ? kTxRings : kRxRings; }

    const GuestMemory& mem_;
    std::uint8_t flags_, sizes_;
    std::size_t capacity_;
    UniqueFd reader_;
    // Destroyed in reverse: the device and the output before the event loop they use.
    boost::asio::io_context io_;
    std::shared_ptr<ConsoleOutput> out_;
    ConsoleDevice dev_;
    std::optional<ConsoleSize> size_;
    std::uint64_t input_taken_ = 0;
    unsigned input_seq_ = 0;
};

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    quiet_logs();
    std::signal(SIGPIPE, SIG_IGN);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    Input in;
    if (!parse_input(data, size, in)) return 0;
    Harness h(*in.mem, in.flags, in.sizes);
    h.bring_up();
    for (const std::uint8_t op : in.script) {
        switch (op & 7) {
        case 0: h.notify(ConsoleDevice::TX); break;
        case 1: h.notify(ConsoleDevice::RX); break;
        case 2: h.input(static_cast<std::size_t>(op >> 3) * 7 + 1); break;
        case 3: h.publish(ConsoleDevice::RX, static_cast<unsigned>(op >> 3) + 1); break;
        case 4: h.publish(ConsoleDevice::TX, static_cast<unsigned>(op >> 3) + 1); break;
        case 5: h.resize(op); break;
        case 6: h.reset(); break;
        case 7: h.host(op); break;
        }
        h.after_step();
    }
    return 0;
}
