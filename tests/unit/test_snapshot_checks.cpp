// VmBuilder::from_snapshot refuses a snapshot that does not fit this host or its own
// configuration before it opens anything of KVM (issue 15, point 2): another CPU vendor or
// architecture, a vCPU count or memory layout its configuration contradicts, a disk it names
// that is gone. Each is a ConfigError naming the cause; no /dev/kvm is needed to reach them.

#include "vmm/arch/x86_64/cpu_template.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/error.hpp"
#include "vmm/builder.hpp"
#include "vmm/snapshot_file.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <string>

using namespace ember;

namespace {

constexpr std::uint64_t MEM_MIB = 128;

// A snapshot this host could load as far as the checks before KVM go: this host's vendor, one
// vCPU and the memory regions of a MEM_MIB configuration.
struct Fixture {
    SnapshotFile snap;
    VmConfig cfg;
    RunOptions opts;
    boost::asio::io_context io;

    Fixture() {
        snap.arch = "x86_64";
        snap.cpu_vendor = host_cpu().vendor;
        snap.vcpus.resize(1);
        cfg.machine.vcpu_count = 1;
        cfg.machine.mem_size_mib = MEM_MIB;
        std::uint64_t offset = 0;
        for (const auto& [addr, size] : layout::ram_regions(MEM_MIB * layout::MiB)) {
            snap.memory.push_back({addr, size, offset});
            offset += size;
        }
        opts.kvm_path = "/nonexistent/kvm"; // a check that let a snapshot through fails here instead
    }

    std::string refusal() {
        try {
            (void)VmBuilder::from_snapshot(io, snap, cfg, UffdMemory{"/nonexistent/uffd.sock"}, opts, {});
        } catch (const ConfigError& e) {
            return e.what();
        } catch (const std::exception& e) {
            return std::string("other error: ") + e.what();
        }
        return "loaded";
    }
};

} // namespace

TEST_CASE("from_snapshot: a snapshot from another CPU vendor is refused, naming both") {
    Fixture f;
    const std::string other = host_cpu().vendor == "AuthenticAMD" ? "GenuineIntel" : "AuthenticAMD";
    f.snap.cpu_vendor = other;
    const std::string why = f.refusal();
    CHECK_THAT(why, Catch::Contains("taken on an " + other + " CPU"));
    CHECK_THAT(why, Catch::Contains("this host's is " + host_cpu().vendor));
}

TEST_CASE("from_snapshot: another architecture is refused") {
    Fixture f;
    f.snap.arch = "aarch64";
    CHECK_THAT(f.refusal(), Catch::Contains("the snapshot is for aarch64, not x86_64"));
}

TEST_CASE("from_snapshot: vCPUs or memory regions that contradict the configuration are refused") {
    Fixture f;
    f.snap.vcpus.resize(2);
    CHECK_THAT(f.refusal(), Catch::Contains("holds 2 vCPUs; its configuration says 1"));

    Fixture g;
    g.cfg.machine.mem_size_mib = 2 * MEM_MIB;
    CHECK_THAT(g.refusal(), Catch::Contains("memory regions do not match its 256 MiB configuration"));

    Fixture h;
    h.snap.memory.back().file_offset += 4096;
    CHECK_THAT(h.refusal(), Catch::Contains("memory regions do not match"));
}

TEST_CASE("from_snapshot: a disk the snapshot names that is gone is refused by path") {
    Fixture f;
    DriveConfig d;
    d.drive_id = "rootfs";
    d.path_on_host = "/nonexistent/ember-test/rootfs.ext4";
    d.is_root_device = true;
    f.cfg.drives.push_back(d);
    CHECK_THAT(f.refusal(), Catch::Contains("/nonexistent/ember-test/rootfs.ext4"));
}

TEST_CASE("from_snapshot: a snapshot that fits gets past every check to the memory back end") {
    Fixture f;
    // The Uffd back end is the first host resource after the checks: its error proves
    // the checks above passed this snapshot.
    CHECK_THAT(f.refusal(), Catch::Contains("Error creating guest memory from uffd"));
}
