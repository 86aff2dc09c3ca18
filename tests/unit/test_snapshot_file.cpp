// The snapshot file format (vmm/snapshot_file.hpp): a round trip keeps every value, and every
// damaged file (any byte flipped, any truncation, another version, inconsistent records behind
// a valid CRC) is a FormatError, never a partial state.

#include "vmm/base/byte_codec.hpp"
#include "vmm/base/crc64.hpp"
#include "vmm/snapshot_file.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <unistd.h>

using namespace ember;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

virtio::DeviceState sample_virtio(std::uint32_t seed, std::size_t queues) {
    virtio::DeviceState d;
    d.virtio.status = 0xf;
    d.virtio.acked_features = (1ULL << 32) | seed;
    d.virtio.config_generation = seed + 1;
    d.virtio.queue_sel = static_cast<std::uint32_t>(queues - 1);
    d.interrupt_status = 1;
    for (std::size_t i = 0; i < queues; ++i) {
        virtio::QueueState q;
        q.max_size = 256;
        q.size = 128;
        q.ready = true;
        q.desc_addr = GuestAddr(0x100000 + i * 0x1000);
        q.avail_addr = GuestAddr(0x100800 + i * 0x1000);
        q.used_addr = GuestAddr(0x100c00 + i * 0x1000);
        q.next_avail = static_cast<std::uint16_t>(65530 + i);
        q.next_used = static_cast<std::uint16_t>(65529 + i);
        q.signalled_used = 7;
        q.signalled_used_valid = true;
        q.event_idx = true;
        q.active = true;
        d.queues.push_back(q);
    }
    return d;
}

VcpuState sample_vcpu(std::uint64_t seed) {
    VcpuState v;
    v.tsc_khz = 2'000'000;
    for (std::uint32_t leaf = 0; leaf < 5; ++leaf) {
        kvm_cpuid_entry2 e{};
        e.function = leaf;
        e.eax = static_cast<std::uint32_t>(seed + leaf);
        v.cpuid.push_back(e);
    }
    v.mp_state.mp_state = KVM_MP_STATE_RUNNABLE;
    v.regs.rip = 0xffffffff81000000ULL + seed;
    v.regs.rsp = seed * 8;
    v.sregs.cr3 = 0x1000 * seed;
    v.fpu.fcw = 0x37f;
    v.xcrs.nr_xcrs = 1;
    v.xsave.region[0] = static_cast<std::uint32_t>(seed);
    v.xsave.region[1023] = 0xdeadbeef;
    v.debugregs.dr7 = 0x400;
    v.lapic.regs[0x20] = static_cast<char>(seed);
    v.msrs.push_back(kvm_msr_entry{0x10, 0, seed * 1000});
    v.msrs.push_back(kvm_msr_entry{0xc0000080, 0, 0xd01});
    v.events.nmi.pending = 1;
    return v;
}

SnapshotDevice sample_balloon_device() {
    virtio::balloon::BalloonState b;
    b.virtio = sample_virtio(6, 3);
    b.num_pages = 64 * virtio::balloon::PAGES_PER_MIB;
    b.actual_pages = 100;
    b.stats_polling_interval_s = 1;
    b.stats_desc = 5;
    b.stats.values[virtio::balloon::stat_tag::MEMFREE] = 123;
    b.stats.values[virtio::balloon::stat_tag::MEMTOT] = 0; // present and 0 is not absent
    b.hinting = {3, 3};
    b.hint_ack_on_stop = true;
    b.hint_last_run = 3;
    b.inflated_pages = 10;
    b.deflated_pages = 2;
    return SnapshotDevice{"", 0xd0005000, 10, b};
}

SnapshotFile sample() {
    SnapshotFile s;
    s.ember_version = "0.test";
    s.cpu_vendor = "AuthenticAMD";
    s.diff = true;
    s.vm_config = R"({"machine-config":{"vcpu_count":2,"mem_size_mib":256}})";
    s.memory.push_back({GuestAddr(0), 0xc0000000, 0});
    s.memory.push_back({GuestAddr(0x100000000), 0x40000000, 0xc0000000});
    s.vm.pit.channels[0].count = 0x1234;
    s.vm.clock.clock = 123456789;
    s.vm.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    s.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    s.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    s.vcpus = {sample_vcpu(1), sample_vcpu(2)};
    s.serial.ier = 0x3;
    s.serial.thr_empty_pending = true;
    for (std::uint8_t b : {'a', 'b', 'c'}) s.serial.rx.push_back(b);
    s.serial.rx.pop_front(); // head != 0: stored as contents, not as the array
    s.i8042.out.push_back(0xfa);
    s.boot_timer.boot_time_us = 42;

    SnapshotDevice blk{"rootfs", 0xd0000000, 5, virtio::block::BlockState{sample_virtio(1, 1), 3 * 1024 * 1024}};
    SnapshotDevice net{"eth0", 0xd0001000, 6, virtio::net::NetState{sample_virtio(2, 2)}};
    virtio::console::ConsoleState con;
    con.virtio = sample_virtio(3, 2);
    con.size = virtio::console::ConsoleSize{80, 25};
    con.size_announced = true;
    SnapshotDevice cons{"", 0xd0002000, 7, con};
    SnapshotDevice rng{"", 0xd0003000, 8, virtio::rng::EntropyState{sample_virtio(4, 1)}};
    SnapshotDevice vsock{"agent_api", 0xd0004000, 9, virtio::vsock::VsockState{sample_virtio(5, 3), 3}};
    s.devices = {blk, net, cons, rng, sample_balloon_device(), vsock};
    return s;
}

// The sample with its balloon last, so tests can address the balloon record from the file's end.
SnapshotFile sample_balloon_last() {
    SnapshotFile s = sample();
    s.devices.push_back(sample_balloon_device());
    return s;
}

// The file's payload, edited by `edit`, behind a valid header and CRC.
std::vector<std::byte> with_payload(const std::vector<std::byte>& file, const std::function<void(std::vector<std::byte>&)>& edit) {
    constexpr std::size_t header = 24;
    std::vector<std::byte> payload(file.begin() + header, file.end() - 8);
    edit(payload);
    ByteWriter w;
    w.raw(std::span(file).first(16));
    w.u64(payload.size());
    w.raw(payload);
    w.u64(crc64(0, w.bytes()));
    return std::move(w.bytes());
}

std::string format_error(std::span<const std::byte> file) {
    try {
        decode_snapshot(file);
    } catch (const FormatError& e) {
        return e.what();
    }
    return "";
}

} // namespace

TEST_CASE("crc64 is CRC-64/XZ and continues across calls") {
    CHECK(crc64(0, bytes_of("123456789")) == 0x995DC9BBDF1939FAULL);
    CHECK(crc64(crc64(0, bytes_of("1234")), bytes_of("56789")) == 0x995DC9BBDF1939FAULL);
    CHECK(crc64(0, {}) == 0);
}

TEST_CASE("a snapshot file round-trips every value") {
    const SnapshotFile s = sample();
    const auto file = encode_snapshot(s);
    const SnapshotFile d = decode_snapshot(file);
    CHECK(d.ember_version == s.ember_version);
    CHECK(d.arch == "x86_64");
    CHECK(d.cpu_vendor == s.cpu_vendor);
    CHECK(d.diff);
    CHECK(d.vm_config == s.vm_config);
    CHECK(d.memory == s.memory);
    CHECK(std::memcmp(&d.vm, &s.vm, sizeof(VmState)) == 0);
    REQUIRE(d.vcpus.size() == 2);
    CHECK(d.vcpus[1].regs.rip == s.vcpus[1].regs.rip);
    CHECK(d.vcpus[1].xsave.region[1023] == 0xdeadbeef);
    CHECK(d.vcpus[0].msrs.size() == 2);
    CHECK(d.vcpus[0].msrs[0].data == 1000);
    CHECK(d.vcpus[1].cpuid.size() == 5);
    CHECK(d.vcpus[1].cpuid[4].eax == 6);
    CHECK(d.serial == s.serial);
    CHECK(d.serial.rx.size() == 2);
    CHECK(d.i8042 == s.i8042);
    CHECK(d.boot_timer == s.boot_timer);
    REQUIRE(d.devices.size() == s.devices.size());
    for (std::size_t i = 0; i < d.devices.size(); ++i) {
        CHECK(d.devices[i].id == s.devices[i].id);
        CHECK(d.devices[i].mmio_base == s.devices[i].mmio_base);
        CHECK(d.devices[i].irq == s.devices[i].irq);
        CHECK(d.devices[i].state == s.devices[i].state);
    }
    CHECK(encode_snapshot(d) == file);
    CHECK(describe_snapshot_version(file) == "v1.0.0");
}

TEST_CASE("every flipped byte and every truncation of a snapshot file is refused") {
    const auto file = encode_snapshot(sample());
    for (std::size_t i = 0; i < file.size(); ++i) {
        auto bad = file;
        bad[i] ^= std::byte{0x01};
        INFO("byte " << i);
        CHECK_THROWS_AS(decode_snapshot(bad), FormatError);
    }
    for (std::size_t n = 0; n < file.size(); ++n) {
        INFO("length " << n);
        CHECK_THROWS_AS(decode_snapshot(std::span(file).first(n)), FormatError);
    }
    auto longer = file;
    longer.push_back(std::byte{0});
    CHECK_THAT(format_error(longer), Catch::Contains("does not match the file's size"));
}

TEST_CASE("a snapshot file's header errors name the problem") {
    const auto file = encode_snapshot(sample());
    auto bad = file;
    bad[0] = std::byte{'X'};
    CHECK_THAT(format_error(bad), Catch::Contains("not an Ember snapshot file"));

    // Version 2 behind a valid CRC.
    bad = file;
    bad[8] = std::byte{2};
    std::vector<std::byte> body(bad.begin(), bad.end() - 8);
    ByteWriter w;
    w.raw(body);
    w.u64(crc64(0, body));
    CHECK_THAT(format_error(w.bytes()), Catch::Contains("format version 2 is not supported"));

    bad = file;
    bad[file.size() - 1] ^= std::byte{0x80};
    CHECK_THAT(format_error(bad), Catch::Contains("corrupted"));
}

TEST_CASE("records that are inconsistent behind a valid CRC are refused") {
    const auto file = encode_snapshot(sample());
    const auto good = with_payload(file, [](std::vector<std::byte>&) {});
    CHECK(good == file);

    // Trailing bytes after the last device.
    CHECK_THAT(format_error(with_payload(file, [](auto& p) { p.push_back(std::byte{0}); })), Catch::Contains("after its last record"));
    // The payload cut short (its length field agrees, the records do not).
    CHECK_THAT(format_error(with_payload(file, [](auto& p) { p.resize(p.size() - 1); })), Catch::Contains("truncated"));

    // The ember_version string's length made huge.
    CHECK_THAT(format_error(with_payload(file, [](auto& p) { p[3] = std::byte{0x7f}; })), Catch::Contains("exceeds the limit"));

    // An unknown device kind: the last device is vsock, with 3 queues. Its kind byte sits
    // before its virtio state (8 u32/u64 fields = 4*7+8 = 36 bytes, then 4-byte count, 3 queues of
    // 2+2+1+8*3+2*3+4 = 39 bytes) and its 8-byte guest_cid.
    const std::size_t vsock_kind = file.size() - 24 - 8 - (36 + 4 + 3 * 39 + 8) - 1;
    CHECK(std::to_integer<int>(file[24 + vsock_kind]) == 5);
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { p[vsock_kind] = std::byte{99}; })),
               Catch::Contains("device kind 99 is not a device this Ember knows"));
    // A boolean that is neither 0 nor 1 (vsock's last queue's `active`).
    const std::size_t last_active = file.size() - 24 - 8 - 8 - 1;
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { p[last_active] = std::byte{2}; })), Catch::Contains("not a boolean"));
}

TEST_CASE("a vm state whose irqchip records name the wrong chips is refused") {
    SnapshotFile s = sample();
    s.vm.pic_slave.chip_id = KVM_IRQCHIP_IOAPIC;
    CHECK_THAT(format_error(encode_snapshot(s)), Catch::Contains("names the wrong interrupt controllers"));
}

TEST_CASE("a kernel struct of another size is refused") {
    SnapshotFile s = sample();
    const auto file = encode_snapshot(s);
    // The vm state's size prefix follows the strings, the diff flag and the memory regions.
    std::size_t off = 0;
    for (const std::string* str : {&s.ember_version, &s.arch, &s.cpu_vendor}) off += 4 + str->size();
    off += 1 + 4 + s.vm_config.size() + 4 + 24 * s.memory.size();
    const auto bad = with_payload(file, [&](auto& p) { p[off] = std::byte{0x01}; });
    CHECK_THAT(format_error(bad), Catch::Contains("vm state has"));
    CHECK_THAT(format_error(bad), Catch::Contains("incompatible build"));
}

TEST_CASE("snapshot files are written and read back; a missing or damaged one names its path") {
    char dir[] = "/tmp/ember-snapfile-XXXXXX";
    REQUIRE(::mkdtemp(dir) != nullptr);
    const std::string path = std::string(dir) + "/vm.snap";
    write_snapshot_file(path, sample());
    CHECK(read_snapshot_file(path).devices.size() == 6);

    REQUIRE(::truncate(path.c_str(), 100) == 0);
    try {
        read_snapshot_file(path);
        FAIL("a truncated file was read");
    } catch (const FormatError& e) {
        CHECK_THAT(std::string(e.what()), Catch::StartsWith(path + ": snapshot file"));
    }
    ::unlink(path.c_str());
    CHECK_THROWS_WITH(read_snapshot_file(path), Catch::Contains("cannot open snapshot file " + path));
    ::rmdir(dir);
}

TEST_CASE("a balloon state round-trips, and a corrupt or inconsistent one is refused naming its field", "[balloon]") {
    const SnapshotFile s = sample_balloon_last();
    const auto file = encode_snapshot(s);
    const SnapshotFile d = decode_snapshot(file);
    REQUIRE(d.devices.size() == s.devices.size());
    const auto& b = std::get<virtio::balloon::BalloonState>(d.devices.back().state);
    CHECK(b == std::get<virtio::balloon::BalloonState>(s.devices.back().state));
    CHECK(b.stats.values[virtio::balloon::stat_tag::MEMTOT] == 0u);
    CHECK_FALSE(b.stats.values[virtio::balloon::stat_tag::SWAP_IN].has_value());
    CHECK(encode_snapshot(d) == file);

    // The balloon record from its end (payload offsets counted back from the payload's end):
    // deflated 8, inflated 8, hint_last_run 4, hint_ack_on_stop 1, guest_cmd 1+4, host_cmd 4,
    // 16 statistics of 1+8, stats_desc 1+2, interval 2, actual 4, num_pages 4.
    const auto at = [](std::vector<std::byte>& p, std::size_t back) -> std::byte& { return p[p.size() - back]; };
    constexpr std::size_t kAck = 21, kHostCmd = 30, kStats = 174, kDescValue = 176, kDescFlag = 177, kInterval = 179,
                          kNumPages = 187;
    CHECK(std::to_integer<int>(file[file.size() - 8 - kNumPages + 1]) == 64); // 64 MiB = 0x4000 pages
    CHECK(std::to_integer<int>(file[file.size() - 8 - kDescValue]) == 5);

    // Each edit behind a valid CRC; each is a FormatError naming the field.
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kNumPages) = std::byte{1}; })),
               Catch::Contains("balloon num_pages 16385 is not a whole number of MiB"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kDescFlag) = std::byte{0}; })),
               Catch::Contains("balloon stats_desc holds a value but is marked absent"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kDescFlag) = std::byte{7}; })),
               Catch::Contains("not a boolean"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kDescValue - 1) = std::byte{1}; })),
               Catch::Contains("balloon stats_desc 261 is past the stats queue's 256 descriptors"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kInterval) = std::byte{0}; })),
               Catch::Contains("balloon stats_desc is held by a balloon without statistics"));
    // The first statistic (SWAP_IN, absent) given a value.
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kStats - 1) = std::byte{9}; })),
               Catch::Contains("balloon statistic holds a value but is marked absent"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kHostCmd) = std::byte{4}; })),
               Catch::Contains("balloon hinting host_cmd 4 is not the last run's id 3"));
    CHECK_THAT(format_error(with_payload(file, [&](auto& p) { at(p, kAck) = std::byte{2}; })), Catch::Contains("not a boolean"));

    // Statistics without a statistics queue.
    SnapshotFile no_stats = sample_balloon_last();
    auto& nb = std::get<virtio::balloon::BalloonState>(no_stats.devices.back().state);
    nb.stats_polling_interval_s = 0;
    nb.stats_desc.reset();
    CHECK_THAT(format_error(encode_snapshot(no_stats)), Catch::Contains("balloon statistic is held by a balloon without statistics"));
    nb.stats = {};
    CHECK_NOTHROW(decode_snapshot(encode_snapshot(no_stats)));
}
