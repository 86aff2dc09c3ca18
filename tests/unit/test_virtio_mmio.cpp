// virtio-mmio transport (devices/virtio/mmio.hpp) and the generic device state machine
// (devices/virtio/device.hpp), driven through register accesses against a fake device.

#include "devices/virtio/device.hpp"
#include "devices/virtio/mmio.hpp"
#include "devices/virtio/spec.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using ember::test::DriverRings;

namespace {

constexpr std::uint32_t ACK = status::ACKNOWLEDGE;
constexpr std::uint32_t DRV = status::DRIVER;
constexpr std::uint32_t FOK = status::FEATURES_OK;
constexpr std::uint32_t DOK = status::DRIVER_OK;
constexpr std::uint32_t NEEDS_RESET = status::DEVICE_NEEDS_RESET;

constexpr std::uint64_t kFakeFeatures = bit(5) | bit(40);

// A device with two queues (max 16 and 8) that records what the base class asks of it.
class FakeDevice final : public VirtioDevice {
public:
    explicit FakeDevice(const GuestMemory& mem) : VirtioDevice(mem, {16, 8}) {}

    std::uint32_t device_type() const noexcept override { return 0x1234; }
    std::uint64_t device_features() const noexcept override { return kFakeFeatures; }
    void read_config(std::uint64_t offset, std::span<std::uint8_t> data) const noexcept override {
        for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(0xc0 + offset + i);
    }
    void write_config(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override {
        config_writes.emplace_back(offset, data.size());
    }
    bool activate() noexcept override {
        ++activations;
        return activate_result;
    }
    void reset_device() noexcept override { ++resets; }
    void process_queue(std::size_t index) noexcept override { processed.push_back(index); }
    std::string name() const override { return "fake"; }

    // The protected hooks a real device calls, for the tests.
    void raise_used(std::size_t q) { signal_used(queues()[q]); }
    void raise_config() { config_changed(); }
    void break_device(const std::string& why) { fail(why); }

    int activations = 0;
    int resets = 0;
    bool activate_result = true;
    std::vector<std::size_t> processed;
    std::vector<std::pair<std::uint64_t, std::size_t>> config_writes;
};

// Reads and resets an eventfd; 0 if it was not signalled.
std::uint64_t take_eventfd(int fd) {
    std::uint64_t v = 0;
    const int dup = ::dup(fd);
    REQUIRE(dup >= 0);
    const ssize_t n = ::read(dup, &v, sizeof v);
    ::close(dup);
    return n == static_cast<ssize_t>(sizeof v) ? v : 0;
}

struct Fixture {
    GuestMemory mem = ember::test::make_test_ram();
    boost::asio::io_context io; // declared before the transport, so it outlives its watchers
    std::shared_ptr<FakeDevice> dev = std::make_shared<FakeDevice>(mem);
    MmioTransport t{dev, io};

    std::uint32_t rd(std::uint64_t off) {
        std::uint8_t b[4] = {0xaa, 0xaa, 0xaa, 0xaa};
        t.read(off, b);
        std::uint32_t v;
        std::memcpy(&v, b, 4);
        return v;
    }
    void wr(std::uint64_t off, std::uint32_t v) {
        std::uint8_t b[4];
        std::memcpy(b, &v, 4);
        t.write(off, b);
    }
    // Runs every ready handler (notification watchers) without blocking.
    void poll() {
        io.restart();
        io.poll();
    }
    std::uint64_t status() { return rd(mmio::STATUS); }

    // ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    void negotiate(std::uint64_t features = bit(feature::VERSION_1)) {
        wr(mmio::STATUS, ACK);
        wr(mmio::STATUS, ACK | DRV);
        wr(mmio::DRIVER_FEATURES_SEL, 0);
        wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features));
        wr(mmio::DRIVER_FEATURES_SEL, 1);
        wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features >> 32));
        wr(mmio::STATUS, ACK | DRV | FOK);
        REQUIRE(status() == (ACK | DRV | FOK));
    }
    // Programs queue `sel` through the registers with `rings` and enables it.
    void setup_queue(std::uint32_t sel, const DriverRings& rings) {
        wr(mmio::QUEUE_SEL, sel);
        wr(mmio::QUEUE_NUM, rings.size());
        wr(mmio::QUEUE_DESC_LOW, static_cast<std::uint32_t>(rings.desc_addr()));
        wr(mmio::QUEUE_DESC_HIGH, static_cast<std::uint32_t>(rings.desc_addr() >> 32));
        wr(mmio::QUEUE_DRIVER_LOW, static_cast<std::uint32_t>(rings.avail_addr()));
        wr(mmio::QUEUE_DRIVER_HIGH, static_cast<std::uint32_t>(rings.avail_addr() >> 32));
        wr(mmio::QUEUE_DEVICE_LOW, static_cast<std::uint32_t>(rings.used_addr()));
        wr(mmio::QUEUE_DEVICE_HIGH, static_cast<std::uint32_t>(rings.used_addr() >> 32));
        wr(mmio::QUEUE_READY, 1);
    }
    // Full initialisation with queue 0 of 8 entries at the standard addresses.
    void bring_up() {
        negotiate();
        setup_queue(0, DriverRings(mem, 8));
        wr(mmio::STATUS, ACK | DRV | FOK | DOK);
        REQUIRE(status() == (ACK | DRV | FOK | DOK));
        REQUIRE(dev->running());
    }
};

} // namespace

TEST_CASE("mmio: identification registers", "[virtio]") {
    Fixture f;
    CHECK(f.rd(mmio::MAGIC_VALUE) == 0x74726976);
    CHECK(f.rd(mmio::VERSION_REG) == 2);
    CHECK(f.rd(mmio::DEVICE_ID) == 0x1234);
    CHECK(f.rd(mmio::VENDOR_ID) == 0);
    CHECK(f.rd(mmio::STATUS) == 0);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == 0);
    CHECK(f.rd(mmio::SHM_LEN_LOW) == 0xffffffff);
    CHECK(f.rd(mmio::SHM_LEN_HIGH) == 0xffffffff);
    CHECK(f.t.rejected_writes() == 0);
    // Write-only and unknown registers read as 0 and are counted.
    CHECK(f.rd(mmio::QUEUE_NOTIFY) == 0);
    CHECK(f.rd(0x0f0) == 0);
    CHECK(f.t.rejected_writes() == 2);
}

TEST_CASE("mmio: registers take aligned 32-bit accesses only", "[virtio]") {
    Fixture f;
    SECTION("reads of other sizes or alignments return zeros") {
        std::uint8_t b2[2] = {0xaa, 0xaa};
        f.t.read(mmio::MAGIC_VALUE, b2);
        CHECK(b2[0] == 0);
        CHECK(b2[1] == 0);
        std::uint8_t b8[8];
        std::memset(b8, 0xaa, sizeof b8);
        f.t.read(mmio::MAGIC_VALUE, b8);
        for (auto b : b8) CHECK(b == 0);
        std::uint8_t b4[4] = {0xaa, 0xaa, 0xaa, 0xaa};
        f.t.read(mmio::MAGIC_VALUE + 2, b4);
        for (auto b : b4) CHECK(b == 0);
        CHECK(f.t.rejected_writes() == 3);
    }
    SECTION("writes of other sizes or alignments change nothing") {
        const std::uint8_t one[1] = {ACK};
        f.t.write(mmio::STATUS, one);
        const std::uint8_t two[2] = {ACK, 0};
        f.t.write(mmio::STATUS, two);
        const std::uint8_t eight[8] = {ACK, 0, 0, 0, 0, 0, 0, 0};
        f.t.write(mmio::STATUS, eight);
        const std::uint8_t four[4] = {ACK, 0, 0, 0};
        f.t.write(mmio::STATUS + 1, four);
        CHECK(f.t.rejected_writes() == 4);
        CHECK(f.status() == 0);
        f.t.write(mmio::STATUS, four);
        CHECK(f.status() == ACK);
        CHECK(f.t.rejected_writes() == 4);
    }
    SECTION("the configuration space takes any size") {
        std::uint8_t b1[1] = {0};
        f.t.read(mmio::CONFIG + 3, b1);
        CHECK(b1[0] == 0xc3);
        std::uint8_t b8[8] = {};
        f.t.read(mmio::CONFIG, b8);
        CHECK(b8[7] == 0xc7);
        const std::uint8_t w2[2] = {1, 2};
        f.t.write(mmio::CONFIG + 6, w2);
        REQUIRE(f.dev->config_writes.size() == 1);
        CHECK(f.dev->config_writes[0] == std::pair<std::uint64_t, std::size_t>{6, 2});
        CHECK(f.t.rejected_writes() == 0);
    }
}

TEST_CASE("mmio: device feature pages", "[virtio]") {
    Fixture f;
    const std::uint64_t offered = kFakeFeatures | bit(feature::VERSION_1) | bit(feature::RING_INDIRECT_DESC) | bit(feature::RING_EVENT_IDX);
    CHECK(f.dev->offered_features() == offered);
    f.wr(mmio::DEVICE_FEATURES_SEL, 0);
    CHECK(f.rd(mmio::DEVICE_FEATURES) == static_cast<std::uint32_t>(offered));
    CHECK((f.rd(mmio::DEVICE_FEATURES) & (1u << 28)) != 0);
    CHECK((f.rd(mmio::DEVICE_FEATURES) & (1u << 29)) != 0);
    f.wr(mmio::DEVICE_FEATURES_SEL, 1);
    CHECK(f.rd(mmio::DEVICE_FEATURES) == static_cast<std::uint32_t>(offered >> 32));
    CHECK((f.rd(mmio::DEVICE_FEATURES) & 1u) != 0); // VERSION_1
    f.wr(mmio::DEVICE_FEATURES_SEL, 2);
    CHECK(f.rd(mmio::DEVICE_FEATURES) == 0);
    f.wr(mmio::DEVICE_FEATURES_SEL, 0xffffffff);
    CHECK(f.rd(mmio::DEVICE_FEATURES) == 0);
    CHECK(f.t.rejected_writes() == 0);
}

TEST_CASE("mmio: driver features are writable only between DRIVER and FEATURES_OK", "[virtio]") {
    Fixture f;
    f.wr(mmio::DRIVER_FEATURES_SEL, 0);
    f.wr(mmio::DRIVER_FEATURES, 0x20);
    CHECK(f.t.rejected_writes() == 1);
    CHECK(f.dev->state().acked_features == 0);
    f.wr(mmio::STATUS, ACK);
    f.wr(mmio::DRIVER_FEATURES, 0x20);
    CHECK(f.t.rejected_writes() == 2);
    f.wr(mmio::STATUS, ACK | DRV);
    f.wr(mmio::DRIVER_FEATURES, 0x20);
    f.wr(mmio::DRIVER_FEATURES_SEL, 1);
    f.wr(mmio::DRIVER_FEATURES, 0x101);
    CHECK(f.dev->state().acked_features == (0x20 | (std::uint64_t{0x101} << 32)));
    // Pages above 1 hold no features: only zero is accepted there.
    f.wr(mmio::DRIVER_FEATURES_SEL, 2);
    f.wr(mmio::DRIVER_FEATURES, 0);
    CHECK(f.t.rejected_writes() == 2);
    f.wr(mmio::DRIVER_FEATURES, 1);
    CHECK(f.t.rejected_writes() == 3);
    // Rewriting page 1 replaces only its half.
    f.wr(mmio::DRIVER_FEATURES_SEL, 1);
    f.wr(mmio::DRIVER_FEATURES, 0x1);
    CHECK(f.dev->state().acked_features == (0x20 | (std::uint64_t{1} << 32)));
    f.wr(mmio::STATUS, ACK | DRV | FOK);
    REQUIRE(f.status() == (ACK | DRV | FOK));
    // Frozen after FEATURES_OK.
    f.wr(mmio::DRIVER_FEATURES_SEL, 0);
    f.wr(mmio::DRIVER_FEATURES, 0);
    CHECK(f.t.rejected_writes() == 4);
    CHECK(f.dev->state().acked_features == (0x20 | (std::uint64_t{1} << 32)));
}

TEST_CASE("mmio: illegal status transitions are refused and change nothing", "[virtio]") {
    Fixture f;
    SECTION("DRIVER before ACKNOWLEDGE") {
        f.wr(mmio::STATUS, DRV);
        CHECK(f.status() == 0);
    }
    SECTION("FEATURES_OK before DRIVER") {
        f.wr(mmio::STATUS, ACK);
        f.wr(mmio::STATUS, ACK | FOK);
        CHECK(f.status() == ACK);
    }
    SECTION("DRIVER_OK before FEATURES_OK") {
        f.wr(mmio::STATUS, ACK);
        f.wr(mmio::STATUS, ACK | DRV);
        f.wr(mmio::STATUS, ACK | DRV | DOK);
        CHECK(f.status() == (ACK | DRV));
        CHECK(f.dev->activations == 0);
    }
    SECTION("DRIVER_OK alone") {
        f.wr(mmio::STATUS, DOK);
        CHECK(f.status() == 0);
    }
    SECTION("clearing a bit") {
        f.wr(mmio::STATUS, ACK);
        f.wr(mmio::STATUS, ACK | DRV);
        f.wr(mmio::STATUS, ACK);
        CHECK(f.status() == (ACK | DRV));
        f.wr(mmio::STATUS, DRV);
        CHECK(f.status() == (ACK | DRV));
    }
    SECTION("setting DEVICE_NEEDS_RESET") {
        f.wr(mmio::STATUS, ACK | NEEDS_RESET);
        CHECK(f.status() == 0);
        f.wr(mmio::STATUS, ACK);
        f.wr(mmio::STATUS, ACK | NEEDS_RESET);
        CHECK(f.status() == ACK);
    }
    SECTION("unknown status bits") {
        f.wr(mmio::STATUS, ACK | 16);
        CHECK(f.status() == 0);
        f.wr(mmio::STATUS, ACK | 0x100);
        CHECK(f.status() == 0);
    }
    CHECK(f.t.rejected_writes() >= 1);
    CHECK(f.dev->activations == 0);
}

TEST_CASE("mmio: legal status transitions, including several bits at once and FAILED", "[virtio]") {
    Fixture f;
    f.wr(mmio::STATUS, ACK | DRV);
    CHECK(f.status() == (ACK | DRV));
    f.wr(mmio::STATUS, ACK | DRV); // rewriting the same value is harmless
    CHECK(f.status() == (ACK | DRV));
    f.wr(mmio::STATUS, ACK | DRV | status::FAILED);
    CHECK(f.status() == (ACK | DRV | status::FAILED));
    CHECK_FALSE(f.dev->running());
    CHECK(f.t.rejected_writes() == 0);
}

TEST_CASE("mmio: FEATURES_OK is refused for unoffered features or without VERSION_1", "[virtio]") {
    // An unoffered bit in the low page, one in the high page, and no VERSION_1 (a legacy driver).
    const std::uint64_t features = GENERATE(bit(feature::VERSION_1) | bit(0), bit(feature::VERSION_1) | bit(63), bit(5));
    INFO("features " << features);
    Fixture f;
    f.wr(mmio::STATUS, ACK);
    f.wr(mmio::STATUS, ACK | DRV);
    f.wr(mmio::DRIVER_FEATURES_SEL, 0);
    f.wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features));
    f.wr(mmio::DRIVER_FEATURES_SEL, 1);
    f.wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features >> 32));
    f.wr(mmio::STATUS, ACK | DRV | FOK);
    // The driver reads the status back and sees FEATURES_OK missing (§3.1.1 step 6).
    CHECK(f.status() == (ACK | DRV));
    // Queue configuration stays closed and DRIVER_OK cannot follow.
    f.wr(mmio::QUEUE_SEL, 0);
    f.wr(mmio::QUEUE_NUM, 8);
    CHECK(f.dev->queues()[0].state().size == 16);
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    CHECK((f.status() & DOK) == 0);
    CHECK(f.dev->activations == 0);
    CHECK_FALSE(f.dev->running());
}

TEST_CASE("mmio: a refused FEATURES_OK also refuses a DRIVER_OK written with it", "[virtio]") {
    // A driver that writes every bit at once with features the device never offered must not
    // end up running without FEATURES_OK.
    Fixture f;
    f.wr(mmio::STATUS, ACK | DRV);
    f.wr(mmio::DRIVER_FEATURES_SEL, 0);
    f.wr(mmio::DRIVER_FEATURES, 1); // bit 0: not offered
    f.wr(mmio::DRIVER_FEATURES_SEL, 1);
    f.wr(mmio::DRIVER_FEATURES, 1);
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    CHECK((f.status() & FOK) == 0);
    CHECK((f.status() & DOK) == 0);
    CHECK(f.dev->activations == 0);
    CHECK_FALSE(f.dev->running());
}

TEST_CASE("mmio: FEATURES_OK and DRIVER_OK in one write work when the features are good", "[virtio]") {
    Fixture f;
    f.wr(mmio::STATUS, ACK | DRV);
    f.wr(mmio::DRIVER_FEATURES_SEL, 1);
    f.wr(mmio::DRIVER_FEATURES, 1);
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    CHECK(f.status() == (ACK | DRV | FOK | DOK));
    CHECK(f.dev->activations == 1);
    CHECK(f.dev->running());
}

TEST_CASE("mmio: queue configuration is writable only between FEATURES_OK and DRIVER_OK", "[virtio]") {
    Fixture f;
    auto& q0 = f.dev->queues()[0];
    f.wr(mmio::QUEUE_SEL, 0);
    CHECK(f.rd(mmio::QUEUE_NUM_MAX) == 16);
    // Before FEATURES_OK.
    f.wr(mmio::STATUS, ACK);
    f.wr(mmio::STATUS, ACK | DRV);
    f.wr(mmio::QUEUE_NUM, 8);
    f.wr(mmio::QUEUE_DESC_LOW, 0x5000);
    f.wr(mmio::QUEUE_DRIVER_LOW, 0x6000);
    f.wr(mmio::QUEUE_DEVICE_LOW, 0x7000);
    f.wr(mmio::QUEUE_READY, 1);
    CHECK(f.t.rejected_writes() == 5);
    CHECK(q0.state().size == 16);
    CHECK(q0.state().desc_addr.raw() == 0);
    CHECK_FALSE(q0.ready());
    CHECK(f.rd(mmio::QUEUE_READY) == 0);
    // Between FEATURES_OK and DRIVER_OK (after a reset, to negotiate from the start).
    f.wr(mmio::STATUS, 0);
    f.negotiate();
    f.setup_queue(0, DriverRings(f.mem, 8));
    CHECK(f.t.rejected_writes() == 5);
    CHECK(q0.state().size == 8);
    CHECK(q0.state().desc_addr.raw() == ember::test::kDescAddr);
    CHECK(q0.state().avail_addr.raw() == ember::test::kAvailAddr);
    CHECK(q0.state().used_addr.raw() == ember::test::kUsedAddr);
    CHECK(f.rd(mmio::QUEUE_READY) == 1);
    // QueueNum above 16 bits is refused outright.
    f.wr(mmio::QUEUE_SEL, 1);
    f.wr(mmio::QUEUE_NUM, 0x10004);
    CHECK(f.t.rejected_writes() == 6);
    CHECK(f.dev->queues()[1].state().size == 8);
    // After DRIVER_OK.
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    REQUIRE(f.dev->running());
    f.wr(mmio::QUEUE_SEL, 0);
    f.wr(mmio::QUEUE_NUM, 4);
    f.wr(mmio::QUEUE_DESC_LOW, 0x5000);
    f.wr(mmio::QUEUE_DEVICE_HIGH, 1);
    f.wr(mmio::QUEUE_READY, 1);
    CHECK(f.t.rejected_writes() == 10);
    CHECK(q0.state().size == 8);
    CHECK(q0.state().desc_addr.raw() == ember::test::kDescAddr);
    CHECK(q0.state().used_addr.raw() == ember::test::kUsedAddr);
    // Clearing QueueReady is accepted but a live queue stays as it is.
    f.wr(mmio::QUEUE_READY, 0);
    CHECK(f.t.rejected_writes() == 10);
    CHECK(f.rd(mmio::QUEUE_READY) == 1);
    CHECK(q0.active());
}

TEST_CASE("mmio: a missing queue has QueueNumMax 0 and takes no configuration", "[virtio]") {
    Fixture f;
    f.negotiate();
    f.wr(mmio::QUEUE_SEL, 1);
    CHECK(f.rd(mmio::QUEUE_NUM_MAX) == 8);
    for (std::uint32_t sel : {2u, 7u, 0xffffffffu}) {
        f.wr(mmio::QUEUE_SEL, sel);
        CHECK(f.rd(mmio::QUEUE_NUM_MAX) == 0);
        CHECK(f.rd(mmio::QUEUE_READY) == 0);
    }
    const auto before = f.t.rejected_writes();
    f.wr(mmio::QUEUE_NUM, 4);
    f.wr(mmio::QUEUE_DESC_LOW, 0x1000);
    f.wr(mmio::QUEUE_READY, 1);
    f.wr(mmio::QUEUE_READY, 0);
    CHECK(f.t.rejected_writes() == before + 4);
}

TEST_CASE("mmio: DRIVER_OK with an invalid queue sets DEVICE_NEEDS_RESET", "[virtio]") {
    Fixture f;
    f.negotiate();
    const std::uint32_t gen = f.rd(mmio::CONFIG_GENERATION);
    std::uint64_t irqs_before = take_eventfd(f.dev->irq_fd());
    CHECK(irqs_before == 0);
    SECTION("size not a power of two") {
        f.setup_queue(0, DriverRings(f.mem, 6));
        CHECK(f.rd(mmio::QUEUE_READY) == 1); // checked only at DRIVER_OK
    }
    SECTION("rings outside RAM") {
        f.setup_queue(0, DriverRings(f.mem, 8, std::uint64_t{1} << 32, 0x3000, 0x4000));
        CHECK(f.dev->queues()[0].state().desc_addr.raw() == std::uint64_t{1} << 32);
    }
    SECTION("misaligned used ring in the second queue") {
        f.setup_queue(0, DriverRings(f.mem, 8));
        f.setup_queue(1, DriverRings(f.mem, 8, 0x20000, 0x21000, 0x22002));
        CHECK(f.dev->queues()[1].state().used_addr.raw() == 0x22002);
    }
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    const std::uint32_t st = static_cast<std::uint32_t>(f.status());
    CHECK((st & NEEDS_RESET) != 0);
    CHECK((st & DOK) != 0);
    CHECK_FALSE(f.dev->running());
    CHECK((f.rd(mmio::INTERRUPT_STATUS) & INT_CONFIG) != 0);
    CHECK(f.rd(mmio::CONFIG_GENERATION) != gen);
    CHECK(f.dev->activations == 0);
    CHECK(f.dev->needs_reset_count() == 1);
    CHECK(take_eventfd(f.dev->irq_fd()) >= 1);
    // Notifications are not served by a failed device.
    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.poll();
    CHECK(f.dev->processed.empty());
}

TEST_CASE("mmio: a device whose activate() fails needs a reset", "[virtio]") {
    Fixture f;
    f.dev->activate_result = false;
    f.negotiate();
    f.setup_queue(0, DriverRings(f.mem, 8));
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    CHECK(f.dev->activations == 1);
    CHECK((f.status() & NEEDS_RESET) != 0);
    CHECK_FALSE(f.dev->running());
    CHECK((f.rd(mmio::INTERRUPT_STATUS) & INT_CONFIG) != 0);
}

TEST_CASE("mmio: writing 0 resets the device, which can then be initialised again", "[virtio]") {
    Fixture f;
    f.bring_up();
    f.wr(mmio::DEVICE_FEATURES_SEL, 1);
    f.wr(mmio::QUEUE_SEL, 0);
    f.dev->break_device("test");
    REQUIRE((f.status() & NEEDS_RESET) != 0);
    REQUIRE(f.rd(mmio::INTERRUPT_STATUS) != 0);
    const std::uint32_t gen = f.rd(mmio::CONFIG_GENERATION);

    f.wr(mmio::STATUS, 0);
    CHECK(f.dev->resets == 1);
    CHECK(f.status() == 0);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == 0);
    CHECK(f.dev->state().acked_features == 0);
    CHECK(f.dev->state().device_features_sel == 0);
    CHECK(f.dev->state().queue_sel == 0);
    CHECK(f.rd(mmio::CONFIG_GENERATION) == gen); // the generation keeps counting across resets
    for (auto& q : f.dev->queues()) {
        CHECK_FALSE(q.ready());
        CHECK_FALSE(q.active());
        CHECK(q.state().size == q.max_size());
        CHECK(q.state().desc_addr.raw() == 0);
        CHECK(q.state().next_avail == 0);
    }
    CHECK(f.rd(mmio::QUEUE_READY) == 0);
    CHECK_FALSE(f.dev->running());

    // Initialisation works again from scratch, on other rings.
    f.negotiate();
    DriverRings rings(f.mem, 4, 0x20000, 0x21000, 0x22000);
    f.setup_queue(0, rings);
    f.wr(mmio::STATUS, ACK | DRV | FOK | DOK);
    CHECK(f.status() == (ACK | DRV | FOK | DOK));
    CHECK(f.dev->running());
    CHECK(f.dev->activations == 2);
    CHECK(f.dev->queues()[0].state().size == 4);
    CHECK(f.dev->queues()[0].state().desc_addr.raw() == 0x20000);
}

TEST_CASE("mmio: InterruptACK clears only the acknowledged bits", "[virtio]") {
    Fixture f;
    f.bring_up();
    f.dev->raise_used(0);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == INT_USED_RING);
    CHECK(take_eventfd(f.dev->irq_fd()) == 1);
    f.dev->raise_config();
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == (INT_USED_RING | INT_CONFIG));
    f.wr(mmio::INTERRUPT_ACK, INT_USED_RING);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == INT_CONFIG);
    f.wr(mmio::INTERRUPT_ACK, INT_USED_RING); // acknowledging a clear bit is harmless
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == INT_CONFIG);
    f.wr(mmio::INTERRUPT_ACK, 0xffffffff);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == 0);
    CHECK(f.t.rejected_writes() == 0);
}

TEST_CASE("mmio: InterruptStatus and InterruptACK do not wait for the device lock", "[virtio]") {
    // The event loop holds the lock while it serves a queue (a TAP write, a batch of completions);
    // the driver's interrupt handler on the vCPU must not stall behind it.
    Fixture f;
    f.bring_up();
    f.dev->raise_used(0);
    std::unique_lock held(f.dev->mutex());
    auto handler = std::async(std::launch::async, [&f] {
        const std::uint32_t isr = f.rd(mmio::INTERRUPT_STATUS);
        f.wr(mmio::INTERRUPT_ACK, isr);
        return isr;
    });
    // Bounded only so that a failing build reports instead of hanging; a passing one is immediate.
    const bool done = handler.wait_for(std::chrono::seconds(10)) == std::future_status::ready;
    held.unlock();
    CHECK(done);
    CHECK(handler.get() == INT_USED_RING);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == 0);
}

TEST_CASE("mmio: used-buffer interrupts honour VIRTQ_AVAIL_F_NO_INTERRUPT", "[virtio]") {
    Fixture f;
    f.bring_up();
    DriverRings rings(f.mem, 8);
    rings.set_avail_flags(AVAIL_F_NO_INTERRUPT);
    f.dev->raise_used(0);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == 0);
    CHECK(take_eventfd(f.dev->irq_fd()) == 0);
    rings.set_avail_flags(0);
    f.dev->raise_used(0);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == INT_USED_RING);
    CHECK(take_eventfd(f.dev->irq_fd()) == 1);
}

TEST_CASE("mmio: config changes bump the generation and raise a config interrupt", "[virtio]") {
    Fixture f;
    const std::uint32_t gen = f.rd(mmio::CONFIG_GENERATION);
    f.dev->raise_config();
    CHECK(f.rd(mmio::CONFIG_GENERATION) == gen + 1);
    CHECK(f.rd(mmio::INTERRUPT_STATUS) == INT_CONFIG);
    CHECK(take_eventfd(f.dev->irq_fd()) == 1);
}

TEST_CASE("mmio: QueueNotify reaches process_queue only while the device runs", "[virtio]") {
    Fixture f;
    // Before DRIVER_OK: the notification is taken but not served.
    f.wr(mmio::QUEUE_NOTIFY, 0);
    CHECK(f.t.rejected_writes() == 0);
    f.poll();
    CHECK(f.dev->processed.empty());

    f.bring_up();
    // DRIVER_OK itself kicks every active queue once (the driver may have queued early).
    f.poll();
    CHECK(f.dev->processed == std::vector<std::size_t>{0});
    f.dev->processed.clear();

    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.poll();
    CHECK(f.dev->processed == std::vector<std::size_t>{0});
    f.dev->processed.clear();

    // Queue 1 was never enabled: its notifications are dropped.
    f.wr(mmio::QUEUE_NOTIFY, 1);
    f.poll();
    CHECK(f.dev->processed.empty());

    // A queue that does not exist is refused at the register.
    f.wr(mmio::QUEUE_NOTIFY, 2);
    CHECK(f.t.rejected_writes() == 1);

    // Several notifications before the loop runs coalesce into one call.
    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.poll();
    CHECK(f.dev->processed == std::vector<std::size_t>{0});
    f.dev->processed.clear();

    // After a reset nothing is served again.
    f.wr(mmio::STATUS, 0);
    f.wr(mmio::QUEUE_NOTIFY, 0);
    f.poll();
    CHECK(f.dev->processed.empty());
}

TEST_CASE("mmio: the transport can be destroyed with notifications pending", "[virtio]") {
    GuestMemory mem = ember::test::make_test_ram();
    boost::asio::io_context io;
    auto dev = std::make_shared<FakeDevice>(mem);
    {
        MmioTransport t(dev, io);
        dev->notify(0);
        dev->notify(1);
    }
    // The closed watchers' handlers run with an error and must not touch the transport.
    io.restart();
    io.poll();
    CHECK(dev->processed.empty());
    CHECK(dev.use_count() == 1);
}
