// Drive images and the kernel arguments they add (vmm/drives.hpp).

#include "test_util.hpp"
#include "vmm/device_manager.hpp"
#include "vmm/drives.hpp"

#include <cstdlib>
#include <fcntl.h>
#include <unistd.h>

using namespace ember;

namespace {
// A temporary file of `bytes` bytes, removed at scope exit.
struct TempImage {
    explicit TempImage(std::uint64_t bytes) {
        char name[] = "/tmp/ember-drive-test.XXXXXX";
        const int fd = ::mkstemp(name);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(bytes)) == 0);
        ::close(fd);
        path = name;
    }
    ~TempImage() { ::unlink(path.c_str()); }
    std::string path;
};
DriveConfig drive(std::string id, std::string path, bool root = false, bool ro = false) {
    return DriveConfig{std::move(id), std::move(path), root, ro, std::nullopt, DriveCacheType::Unsafe, DriveIoEngine::Async, std::nullopt};
}
} // namespace

TEST_CASE("drives: kernel arguments go before init's arguments") {
    CHECK(add_kernel_args("console=ttyS0", "root=/dev/vda rw") == "console=ttyS0 root=/dev/vda rw");
    CHECK(add_kernel_args("console=ttyS0 -- echo hi", "x=1") == "console=ttyS0 x=1 -- echo hi");
    CHECK(add_kernel_args("a -- b -- c", "x=1") == "a x=1 -- b -- c");
    CHECK(add_kernel_args("-- init args", "x=1") == "x=1 -- init args");
    CHECK(add_kernel_args("a --", "x=1") == "a x=1 --");
    CHECK(add_kernel_args("", "x=1") == "x=1");
    CHECK(add_kernel_args("a --foo=1", "x=1") == "a --foo=1 x=1");
    CHECK(add_kernel_args("a", "") == "a");
}

TEST_CASE("drives: virtio-mmio slots and IRQs follow Firecracker's layout") {
    CHECK(virtio_mmio_arg(0) == "virtio_mmio.device=4K@0xc0001000:5");
    CHECK(virtio_mmio_arg(3) == "virtio_mmio.device=4K@0xc0004000:8");
    CHECK(max_virtio_devices() == 19); // IRQs 5..23
    CHECK(virtio_irq(max_virtio_devices() - 1) == 23);
}

TEST_CASE("drives: root drive first, root arguments, and refusals") {
    TempImage a(1 << 20), b(2 << 20), odd(1000), empty(0);
    auto opened = open_drives({drive("data", a.path), drive("rootfs", b.path, true, true)});
    REQUIRE(opened.size() == 2);
    CHECK(opened[0].cfg.drive_id == "rootfs");
    CHECK(opened[0].size == (2u << 20));
    CHECK(opened[1].cfg.drive_id == "data");
    CHECK(root_args(opened) == "root=/dev/vda ro");
    CHECK(fcntl(opened[0].fd.get(), F_GETFD) & FD_CLOEXEC);
    CHECK((fcntl(opened[0].fd.get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
    CHECK((fcntl(opened[1].fd.get(), F_GETFL) & O_ACCMODE) == O_RDWR);

    auto pu = drive("rootfs", b.path, true);
    pu.partuuid = "1234-01";
    CHECK(root_args(open_drives({pu})) == "root=PARTUUID=1234-01 rw");
    CHECK(root_args(open_drives({drive("data", a.path)})).empty());

    // Not whole sectors: accepted with a warning, as Firecracker does (the guest sees 1 sector).
    const auto odd_opened = open_drives({drive("x", odd.path)});
    REQUIRE(odd_opened.size() == 1);
    CHECK(odd_opened[0].size == 1000);
    // Empty: a disk of 0 sectors, as Firecracker's (patch-block.md PATCHes the real image in later).
    const auto empty_opened = open_drives({drive("x", empty.path)});
    REQUIRE(empty_opened.size() == 1);
    CHECK(empty_opened[0].size == 0);
    CHECK_CONFIG_ERROR(open_drives({drive("x", "/nonexistent/ember.img")}), "drive x: /nonexistent/ember.img");
    CHECK_CONFIG_ERROR(open_drives({drive("x", a.path), drive("x", b.path)}), "used twice");
    CHECK_CONFIG_ERROR(open_drives({drive("x", a.path, true), drive("y", b.path, true)}), "only one drive");
    CHECK_CONFIG_ERROR(open_drives({drive("x", a.path), drive("y", a.path, false, true)}), "same file");
    // The same file twice read-only is fine.
    CHECK(open_drives({drive("x", a.path, false, true), drive("y", a.path, false, true)}).size() == 2);
    std::vector<DriveConfig> many;
    for (std::size_t i = 0; i < max_virtio_devices() + 1; ++i) many.push_back(drive("d" + std::to_string(i), a.path, false, true));
    CHECK_CONFIG_ERROR(open_drives(many), "virtio devices");
}
