#include "vmm/snapshot_file.hpp"

#include "vmm/base/byte_codec.hpp"
#include "vmm/base/crc64.hpp"
#include "vmm/base/unique_fd.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <optional>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember {
namespace {

constexpr std::array<char, 8> kMagic{'E', 'M', 'B', 'E', 'R', 'S', 'N', 'P'};
constexpr std::size_t kHeaderBytes = 8 + 4 + 4 + 8;
constexpr std::size_t kTrailerBytes = 8;
// Bounds on counts, far above anything Ember builds, so a corrupt count fails before it allocates.
constexpr std::size_t kMaxString = 1 << 20;         // the rendered VM config is the largest
constexpr std::size_t kMaxRegions = 64;
constexpr std::size_t kMaxVcpus = 256;
constexpr std::size_t kMaxCpuidEntries = 1024;
constexpr std::size_t kMaxMsrs = 4096;
constexpr std::size_t kMaxDevices = 256;
constexpr std::size_t kMaxQueues = 64;
constexpr std::size_t kMaxId = 4096;

// Device kinds as stored; the numbers are part of the format.
enum class DeviceKind : std::uint8_t { Block = 1, Net = 2, Console = 3, Entropy = 4, Vsock = 5, Balloon = 6 };

// An optional value: a presence flag and the value, 0 when absent (one encoding per state, so a
// stray value behind a cleared flag is corruption, not ignored).
template <class T>
void put_optional(ByteWriter& w, const std::optional<T>& v) {
    w.boolean(v.has_value());
    if constexpr (sizeof(T) == 2) w.u16(v.value_or(0));
    else if constexpr (sizeof(T) == 4) w.u32(v.value_or(0));
    else w.u64(v.value_or(0));
}
template <class T>
std::optional<T> get_optional(ByteReader& r, const char* field) {
    const bool has = r.boolean(field);
    T v{};
    if constexpr (sizeof(T) == 2) v = r.u16(field);
    else if constexpr (sizeof(T) == 4) v = r.u32(field);
    else v = r.u64(field);
    if (!has && v != 0) r.fail(field, "holds a value but is marked absent");
    return has ? std::optional<T>(v) : std::nullopt;
}


template <std::size_t N>
void put_fifo(ByteWriter& w, const ByteFifo<N>& f) {
    w.u8(static_cast<std::uint8_t>(f.size()));
    for (std::size_t i = 0; i < f.size(); ++i) w.u8(f.buf[(f.head + i) % N]);
}
template <std::size_t N>
ByteFifo<N> get_fifo(ByteReader& r, const char* field) {
    ByteFifo<N> f;
    const std::uint8_t n = r.u8(field);
    if (n > N) r.fail(field, "holds " + std::to_string(n) + " bytes; the FIFO has room for " + std::to_string(N));
    for (std::uint8_t i = 0; i < n; ++i) f.push_back(r.u8(field));
    return f;
}

void put_queue(ByteWriter& w, const virtio::QueueState& q) {
    w.u16(q.max_size);
    w.u16(q.size);
    w.boolean(q.ready);
    w.u64(q.desc_addr.raw());
    w.u64(q.avail_addr.raw());
    w.u64(q.used_addr.raw());
    w.u16(q.next_avail);
    w.u16(q.next_used);
    w.u16(q.signalled_used);
    w.boolean(q.signalled_used_valid);
    w.boolean(q.event_idx);
    w.boolean(q.indirect);
    w.boolean(q.active);
}
virtio::QueueState get_queue(ByteReader& r) {
    virtio::QueueState q;
    q.max_size = r.u16("queue max_size");
    q.size = r.u16("queue size");
    q.ready = r.boolean("queue ready");
    q.desc_addr = GuestAddr(r.u64("queue desc_addr"));
    q.avail_addr = GuestAddr(r.u64("queue avail_addr"));
    q.used_addr = GuestAddr(r.u64("queue used_addr"));
    q.next_avail = r.u16("queue next_avail");
    q.next_used = r.u16("queue next_used");
    q.signalled_used = r.u16("queue signalled_used");
    q.signalled_used_valid = r.boolean("queue signalled_used_valid");
    q.event_idx = r.boolean("queue event_idx");
    q.indirect = r.boolean("queue indirect");
    q.active = r.boolean("queue active");
    return q;
}

void put_virtio(ByteWriter& w, const virtio::DeviceState& d) {
    w.u32(d.virtio.status);
    w.u64(d.virtio.acked_features);
    w.u32(d.virtio.config_generation);
    w.u32(d.virtio.device_features_sel);
    w.u32(d.virtio.driver_features_sel);
    w.u32(d.virtio.queue_sel);
    w.u32(d.virtio.shm_sel);
    w.u32(d.interrupt_status);
    w.u32(static_cast<std::uint32_t>(d.queues.size()));
    for (const auto& q : d.queues) put_queue(w, q);
}
virtio::DeviceState get_virtio(ByteReader& r) {
    virtio::DeviceState d;
    d.virtio.status = r.u32("virtio status");
    d.virtio.acked_features = r.u64("virtio acked_features");
    d.virtio.config_generation = r.u32("virtio config_generation");
    d.virtio.device_features_sel = r.u32("virtio device_features_sel");
    d.virtio.driver_features_sel = r.u32("virtio driver_features_sel");
    d.virtio.queue_sel = r.u32("virtio queue_sel");
    d.virtio.shm_sel = r.u32("virtio shm_sel");
    d.interrupt_status = r.u32("virtio interrupt_status");
    const std::size_t n = r.count("virtio queue count", kMaxQueues, 1);
    d.queues.reserve(n);
    for (std::size_t i = 0; i < n; ++i) d.queues.push_back(get_queue(r));
    return d;
}

void put_balloon(ByteWriter& w, const virtio::balloon::BalloonState& s) {
    put_virtio(w, s.virtio);
    w.u32(s.num_pages);
    w.u32(s.actual_pages);
    w.u16(s.stats_polling_interval_s);
    put_optional(w, s.stats_desc);
    for (const auto& v : s.stats.values) put_optional(w, v);
    w.u32(s.hinting.host_cmd);
    put_optional(w, s.hinting.guest_cmd);
    w.boolean(s.hint_ack_on_stop);
    w.u32(s.hint_last_run);
    w.u64(s.inflated_pages);
    w.u64(s.deflated_pages);
}
// The device's own restore checks the state against the queues (BalloonDevice::restore); these
// are the checks that need nothing but the record.
virtio::balloon::BalloonState get_balloon(ByteReader& r) {
    namespace vb = virtio::balloon;
    vb::BalloonState s;
    s.virtio = get_virtio(r);
    s.num_pages = r.u32("balloon num_pages");
    if (s.num_pages % vb::PAGES_PER_MIB != 0)
        r.fail("balloon num_pages", std::to_string(s.num_pages) + " is not a whole number of MiB (the API sets the target in MiB)");
    s.actual_pages = r.u32("balloon actual_pages");
    s.stats_polling_interval_s = r.u16("balloon stats_polling_interval_s");
    s.stats_desc = get_optional<std::uint16_t>(r, "balloon stats_desc");
    if (s.stats_desc && s.stats_polling_interval_s == 0) r.fail("balloon stats_desc", "is held by a balloon without statistics");
    if (s.stats_desc && *s.stats_desc >= vb::BalloonDevice::QUEUE_SIZE)
        r.fail("balloon stats_desc", std::to_string(*s.stats_desc) + " is past the stats queue's " +
                                         std::to_string(vb::BalloonDevice::QUEUE_SIZE) + " descriptors");
    for (auto& v : s.stats.values) v = get_optional<std::uint64_t>(r, "balloon statistic");
    if (s.stats_polling_interval_s == 0 && std::any_of(s.stats.values.begin(), s.stats.values.end(), [](const auto& v) { return v.has_value(); }))
        r.fail("balloon statistic", "is held by a balloon without statistics");
    s.hinting.host_cmd = r.u32("balloon hinting host_cmd");
    s.hinting.guest_cmd = get_optional<std::uint32_t>(r, "balloon hinting guest_cmd");
    s.hint_ack_on_stop = r.boolean("balloon hint_ack_on_stop");
    s.hint_last_run = r.u32("balloon hint_last_run");
    if (s.hinting.host_cmd >= vb::CMD_ID_FIRST && s.hinting.host_cmd != s.hint_last_run)
        r.fail("balloon hinting host_cmd", std::to_string(s.hinting.host_cmd) + " is not the last run's id " + std::to_string(s.hint_last_run));
    s.inflated_pages = r.u64("balloon inflated_pages");
    s.deflated_pages = r.u64("balloon deflated_pages");
    return s;
}

struct DevicePayloadWriter {
    ByteWriter& w;
    void operator()(const virtio::block::BlockState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Block));
        put_virtio(w, s.virtio);
        w.u64(s.disk_bytes);
    }
    void operator()(const virtio::net::NetState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Net));
        put_virtio(w, s.virtio);
    }
    void operator()(const virtio::console::ConsoleState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Console));
        put_virtio(w, s.virtio);
        w.boolean(s.size.has_value());
        w.u16(s.size ? s.size->cols : 0);
        w.u16(s.size ? s.size->rows : 0);
        w.boolean(s.size_announced);
        w.boolean(s.input_waiting);
    }
    void operator()(const virtio::rng::EntropyState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Entropy));
        put_virtio(w, s.virtio);
    }
    void operator()(const virtio::vsock::VsockState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Vsock));
        put_virtio(w, s.virtio);
        w.u64(s.guest_cid);
    }
    void operator()(const virtio::balloon::BalloonState& s) const {
        w.u8(static_cast<std::uint8_t>(DeviceKind::Balloon));
        put_balloon(w, s);
    }
};

SnapshotDevice get_device(ByteReader& r) {
    SnapshotDevice d;
    d.id = r.string("device id", kMaxId);
    d.mmio_base = r.u64("device mmio_base");
    d.irq = r.u32("device irq");
    const std::uint8_t kind = r.u8("device kind");
    switch (static_cast<DeviceKind>(kind)) {
    case DeviceKind::Block: {
        virtio::block::BlockState s;
        s.virtio = get_virtio(r);
        s.disk_bytes = r.u64("block disk_bytes");
        d.state = std::move(s);
        break;
    }
    case DeviceKind::Net: {
        virtio::net::NetState s;
        s.virtio = get_virtio(r);
        d.state = std::move(s);
        break;
    }
    case DeviceKind::Console: {
        virtio::console::ConsoleState s;
        s.virtio = get_virtio(r);
        const bool has_size = r.boolean("console has_size");
        virtio::console::ConsoleSize size;
        size.cols = r.u16("console cols");
        size.rows = r.u16("console rows");
        if (has_size) s.size = size;
        s.size_announced = r.boolean("console size_announced");
        s.input_waiting = r.boolean("console input_waiting");
        d.state = std::move(s);
        break;
    }
    case DeviceKind::Entropy: {
        virtio::rng::EntropyState s;
        s.virtio = get_virtio(r);
        d.state = std::move(s);
        break;
    }
    case DeviceKind::Vsock: {
        virtio::vsock::VsockState s;
        s.virtio = get_virtio(r);
        s.guest_cid = r.u64("vsock guest_cid");
        d.state = std::move(s);
        break;
    }
    case DeviceKind::Balloon: d.state = get_balloon(r); break;
    default:
        r.fail("device kind", std::to_string(kind) + " is not a device this Ember knows");
    }
    return d;
}

void put_vcpu(ByteWriter& w, const VcpuState& v) {
    w.u32(v.tsc_khz);
    w.pod_array(v.cpuid);
    w.pod(v.mp_state);
    w.pod(v.regs);
    w.pod(v.sregs);
    w.pod(v.fpu);
    w.pod(v.xcrs);
    w.pod(v.xsave);
    w.pod(v.debugregs);
    w.pod(v.lapic);
    w.pod_array(v.msrs);
    w.pod(v.events);
}
VcpuState get_vcpu(ByteReader& r) {
    VcpuState v;
    v.tsc_khz = r.u32("vcpu tsc_khz");
    v.cpuid = r.pod_array<kvm_cpuid_entry2>("vcpu cpuid", kMaxCpuidEntries);
    v.mp_state = r.pod<kvm_mp_state>("vcpu mp_state");
    v.regs = r.pod<kvm_regs>("vcpu regs");
    v.sregs = r.pod<kvm_sregs>("vcpu sregs");
    v.fpu = r.pod<kvm_fpu>("vcpu fpu");
    v.xcrs = r.pod<kvm_xcrs>("vcpu xcrs");
    v.xsave = r.pod<kvm_abi::XsaveRegion>("vcpu xsave");
    v.debugregs = r.pod<kvm_debugregs>("vcpu debugregs");
    v.lapic = r.pod<kvm_lapic_state>("vcpu lapic");
    v.msrs = r.pod_array<kvm_msr_entry>("vcpu msrs", kMaxMsrs);
    v.events = r.pod<kvm_vcpu_events>("vcpu events");
    return v;
}

void put_serial(ByteWriter& w, const SerialState& s) {
    for (std::uint8_t b : {s.ier, s.lcr, s.mcr, s.scr, s.dll, s.dlm, s.fcr}) w.u8(b);
    w.boolean(s.thr_empty_pending);
    put_fifo(w, s.rx);
}
SerialState get_serial(ByteReader& r) {
    SerialState s;
    s.ier = r.u8("serial ier");
    s.lcr = r.u8("serial lcr");
    s.mcr = r.u8("serial mcr");
    s.scr = r.u8("serial scr");
    s.dll = r.u8("serial dll");
    s.dlm = r.u8("serial dlm");
    s.fcr = r.u8("serial fcr");
    s.thr_empty_pending = r.boolean("serial thr_empty_pending");
    s.rx = get_fifo<decltype(s.rx)::capacity()>(r, "serial rx");
    return s;
}

void put_i8042(ByteWriter& w, const I8042State& s) {
    for (std::uint8_t b : {s.status, s.control, s.pending_cmd, s.outport}) w.u8(b);
    put_fifo(w, s.out);
}
I8042State get_i8042(ByteReader& r) {
    I8042State s;
    s.status = r.u8("i8042 status");
    s.control = r.u8("i8042 control");
    s.pending_cmd = r.u8("i8042 pending_cmd");
    s.outport = r.u8("i8042 outport");
    s.out = get_fifo<decltype(s.out)::capacity()>(r, "i8042 out");
    return s;
}

void put_payload(ByteWriter& w, const SnapshotFile& s) {
    w.string(s.ember_version);
    w.string(s.arch);
    w.string(s.cpu_vendor);
    w.boolean(s.diff);
    w.string(s.vm_config);
    w.u32(static_cast<std::uint32_t>(s.memory.size()));
    for (const auto& m : s.memory) {
        w.u64(m.guest_addr.raw());
        w.u64(m.size);
        w.u64(m.file_offset);
    }
    w.pod(s.vm);
    w.u32(static_cast<std::uint32_t>(s.vcpus.size()));
    for (const auto& v : s.vcpus) put_vcpu(w, v);
    put_serial(w, s.serial);
    put_i8042(w, s.i8042);
    w.u64(s.boot_timer.boot_time_us);
    w.u32(static_cast<std::uint32_t>(s.devices.size()));
    for (const auto& d : s.devices) {
        w.string(d.id);
        w.u64(d.mmio_base);
        w.u32(d.irq);
        std::visit(DevicePayloadWriter{w}, d.state);
    }
}

SnapshotFile get_payload(ByteReader& r) {
    SnapshotFile s;
    s.ember_version = r.string("ember_version", 256);
    s.arch = r.string("arch", 64);
    s.cpu_vendor = r.string("cpu_vendor", 64);
    s.diff = r.boolean("diff");
    s.vm_config = r.string("vm_config", kMaxString);
    const std::size_t regions = r.count("memory region count", kMaxRegions, 24);
    for (std::size_t i = 0; i < regions; ++i) {
        SnapshotMemoryRegion m;
        m.guest_addr = GuestAddr(r.u64("memory guest_addr"));
        m.size = r.u64("memory size");
        m.file_offset = r.u64("memory file_offset");
        if (!GuestRange::make(m.guest_addr, m.size)) r.fail("memory region", "wraps past the end of the address space");
        if (m.file_offset > UINT64_MAX - m.size) r.fail("memory region", "runs past the largest file offset");
        s.memory.push_back(m);
    }
    s.vm = r.pod<VmState>("vm state");
    if (s.vm.pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER || s.vm.pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
        s.vm.ioapic.chip_id != KVM_IRQCHIP_IOAPIC)
        r.fail("vm state", "names the wrong interrupt controllers");
    const std::size_t vcpus = r.count("vcpu count", kMaxVcpus, 1);
    if (vcpus == 0) r.fail("vcpu count", "is 0");
    for (std::size_t i = 0; i < vcpus; ++i) s.vcpus.push_back(get_vcpu(r));
    s.serial = get_serial(r);
    s.i8042 = get_i8042(r);
    s.boot_timer.boot_time_us = r.u64("boot_timer");
    const std::size_t devices = r.count("device count", kMaxDevices, 1);
    for (std::size_t i = 0; i < devices; ++i) s.devices.push_back(get_device(r));
    if (r.remaining() != 0) r.fail("payload", "has " + std::to_string(r.remaining()) + " bytes after its last record");
    return s;
}

// Checks magic, version, length and CRC; returns the payload.
std::span<const std::byte> checked_payload(std::span<const std::byte> file) {
    ByteReader h(file, "snapshot file");
    const auto magic = h.raw("magic", kMagic.size());
    if (std::memcmp(magic.data(), kMagic.data(), kMagic.size()) != 0) h.fail("magic", "is wrong: this is not an Ember snapshot file");
    const std::uint32_t version = h.u32("format version");
    if (version != kSnapshotFormatVersion)
        h.fail("format version", std::to_string(version) + " is not supported: this Ember reads version " +
                                     std::to_string(kSnapshotFormatVersion));
    const std::uint32_t flags = h.u32("flags");
    if (flags != 0) h.fail("flags", std::to_string(flags) + " are not known to this Ember");
    const std::uint64_t len = h.u64("payload length");
    if (len > h.remaining() || h.remaining() - len != kTrailerBytes)
        h.fail("payload length", std::to_string(len) + " does not match the file's size of " + std::to_string(file.size()) +
                                     " bytes (truncated or extended)");
    const auto payload = h.raw("payload", static_cast<std::size_t>(len));
    const std::uint64_t stored = h.u64("crc");
    const std::uint64_t computed = crc64(0, file.first(kHeaderBytes + payload.size()));
    if (stored != computed) h.fail("crc", "does not match its contents: the file is corrupted");
    return payload;
}

} // namespace

std::vector<std::byte> frame_snapshot_payload(std::span<const std::byte> payload) {
    ByteWriter w;
    w.raw(std::as_bytes(std::span(kMagic)));
    w.u32(kSnapshotFormatVersion);
    w.u32(0);
    w.u64(payload.size());
    w.raw(payload);
    w.u64(crc64(0, w.bytes()));
    return std::move(w.bytes());
}

std::vector<std::byte> encode_snapshot(const SnapshotFile& s) {
    ByteWriter payload;
    put_payload(payload, s);
    return frame_snapshot_payload(payload.bytes());
}

SnapshotFile decode_snapshot(std::span<const std::byte> file) {
    ByteReader r(checked_payload(file), "snapshot file payload");
    return get_payload(r);
}

std::string describe_snapshot_version(std::span<const std::byte> file) {
    ByteReader h(file, "snapshot file");
    const auto magic = h.raw("magic", kMagic.size());
    if (std::memcmp(magic.data(), kMagic.data(), kMagic.size()) != 0) h.fail("magic", "is wrong: this is not an Ember snapshot file");
    return "v" + std::to_string(h.u32("format version")) + ".0.0";
}

std::string describe_snapshot_file_version(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw ConfigError("cannot open snapshot file " + path + ": " + std::strerror(errno));
    std::array<std::byte, kHeaderBytes> head{};
    std::size_t got = 0;
    while (got < head.size()) {
        const ssize_t n = ::read(fd.get(), head.data() + got, head.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("cannot read snapshot file " + path + ": " + std::strerror(errno));
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    try {
        return describe_snapshot_version(std::span(head).first(got));
    } catch (const FormatError& e) {
        throw FormatError(path + ": " + e.what());
    }
}

SnapshotFile read_snapshot_file(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) throw ConfigError("cannot open snapshot file " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw ConfigError("cannot stat snapshot file " + path + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) throw ConfigError("snapshot file " + path + " is not a regular file");
    constexpr off_t kMaxFile = 64 << 20;
    if (st.st_size > kMaxFile) throw FormatError("snapshot file " + path + " is " + std::to_string(st.st_size) + " bytes, more than a snapshot can be");
    std::vector<std::byte> bytes(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("cannot read snapshot file " + path + ": " + std::strerror(errno));
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    bytes.resize(done);
    try {
        return decode_snapshot(bytes);
    } catch (const FormatError& e) {
        throw FormatError(path + ": " + e.what());
    }
}

void write_snapshot_file(const std::string& path, const SnapshotFile& s) {
    const auto bytes = encode_snapshot(s);
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) throw ConfigError("cannot create snapshot file " + path + ": " + std::strerror(errno));
    std::size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("cannot write snapshot file " + path + ": " + std::strerror(errno));
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0) throw ConfigError("cannot sync snapshot file " + path + ": " + std::strerror(errno));
}

} // namespace ember
