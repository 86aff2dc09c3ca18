// DeviceManager: one attach call allocates a virtio device's slot and IRQ, puts its transport on
// the MMIO bus and yields its kernel argument; devices are found by type and id; metric groups
// list what each device reports.

#include "devices/virtio/block/device.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/mmio.hpp"
#include "devices/virtio/spec.hpp"
#include "test_util.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/console_output.hpp"
#include "vmm/base/error.hpp"
#include "vmm/device_manager.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>

using namespace ember;

namespace {

struct Rig {
    boost::asio::io_context io;
    GuestMemory mem = layout::guest_memory(16 * layout::MiB);
    std::shared_ptr<ConsoleOutput> out = std::make_shared<ConsoleOutput>(io, UniqueFd(::open("/dev/null", O_WRONLY | O_CLOEXEC)));
    DeviceManager dm{io};
    std::shared_ptr<virtio::console::ConsoleDevice> console() {
        return std::make_shared<virtio::console::ConsoleDevice>(mem, out, std::nullopt);
    }
    std::uint32_t read32(std::uint64_t addr) {
        std::uint8_t b[4]{};
        REQUIRE(dm.mmio().read(addr, b));
        std::uint32_t v;
        std::memcpy(&v, b, 4);
        return v;
    }
};

} // namespace

TEST_CASE("device manager: each attach takes the next slot and IRQ and adds its kernel argument") {
    Rig r;
    CHECK(r.dm.kernel_args().empty());
    r.dm.attach_virtio(r.console(), "a");
    r.dm.attach_virtio(r.console(), "b");
    CHECK(r.dm.virtio_count() == 2);
    CHECK(r.dm.kernel_args() == "virtio_mmio.device=4K@0xc0001000:5 virtio_mmio.device=4K@0xc0002000:6");
    // The transports answer at the slots the arguments name (virtio 1.2 §4.2.2: magic, version, device id).
    for (std::uint64_t base : {0xc0001000ULL, 0xc0002000ULL}) {
        CHECK(r.read32(base + virtio::mmio::MAGIC_VALUE) == virtio::mmio::MAGIC);
        CHECK(r.read32(base + virtio::mmio::DEVICE_ID) == virtio::device_id::CONSOLE);
    }
    std::uint8_t b[4]{};
    CHECK_FALSE(r.dm.mmio().read(0xc0003000, b)); // no third slot
}

TEST_CASE("device manager: devices are found by type and id") {
    Rig r;
    auto a = r.console(), b = r.console();
    r.dm.attach_virtio(a, "a");
    r.dm.attach_virtio(b, "b");
    CHECK(r.dm.find<virtio::console::ConsoleDevice>("b") == b);
    CHECK(r.dm.find<virtio::console::ConsoleDevice>("a") == a);
    CHECK(r.dm.find<virtio::console::ConsoleDevice>("c") == nullptr);
    CHECK(r.dm.find<virtio::block::BlockDevice>("a") == nullptr); // right id, wrong type
    CHECK(r.dm.find_first<virtio::console::ConsoleDevice>() == a);
}

TEST_CASE("device manager: the IRQ range bounds the number of virtio devices") {
    Rig r;
    for (std::size_t i = 0; i < max_virtio_devices(); ++i) r.dm.attach_virtio(r.console(), "c" + std::to_string(i));
    CHECK(r.dm.kernel_args().ends_with("virtio_mmio.device=4K@0xc0013000:23"));
    CHECK_CONFIG_ERROR(r.dm.attach_virtio(r.console(), "one-too-many"), "virtio devices fit the IRQ range");
    CHECK(r.dm.virtio_count() == max_virtio_devices()); // the refused device left nothing behind
}

TEST_CASE("device manager: metric groups list each device's own counters") {
    Rig r;
    auto c = r.console();
    r.dm.attach_virtio(c, "", "virtio_console");
    r.dm.add_metrics("extra", "x", [] { return MetricValues{{"n", 7}}; });
    const auto& groups = r.dm.metric_groups();
    REQUIRE(groups.size() == 2);
    CHECK(groups[0].kind == "virtio_console");
    CHECK(groups[0].id.empty());
    const MetricValues before = groups[0].values();
    CHECK(before.size() == 10);
    auto find = [](const MetricValues& v, const char* name) {
        for (const auto& [n, x] : v)
            if (std::string(n) == name) return x;
        FAIL("no metric " << name);
        return std::uint64_t{0};
    };
    CHECK(find(before, "tx_count") == 0);
    // The values are read when listed: a counter the device bumps shows up.
    bump(const_cast<virtio::console::ConsoleMetrics&>(c->metrics()).tx_count, 3);
    CHECK(find(groups[0].values(), "tx_count") == 3);
    CHECK(groups[1].kind == "extra");
    CHECK(groups[1].id == "x");
    CHECK(find(groups[1].values(), "n") == 7);
}
