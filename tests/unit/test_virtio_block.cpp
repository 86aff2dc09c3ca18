// virtio-blk: the request parser (devices/virtio/block/request.hpp), both I/O engines
// (block/backend.hpp) and the whole device driven through the MMIO transport (block/device.hpp).

#include "devices/virtio/block/backend.hpp"
#include "devices/virtio/block/cow.hpp"
#include "devices/virtio/block/device.hpp"
#include "devices/virtio/block/request.hpp"
#include "devices/virtio/mmio.hpp"
#include "devices/virtio/spec.hpp"
#include "io_util.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/io_ring.hpp"
#include "vmm/base/unique_fd.hpp"
#include "vmm/vm_config.hpp"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <functional>
#include <memory>
#include <poll.h>
#include <set>
#include <string>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::block;
using ember::test::DriverRings;

namespace {

// ------------------------------------------------------------------------------------------
// parse_request helpers: descriptors over buffers this test owns.

class ChainBuilder {
public:
    ChainBuilder& header(std::uint32_t type, std::uint64_t sector, std::uint32_t len = 16, bool writable = false) {
        std::byte* p = add(len, writable);
        if (len >= 4) std::memcpy(p, &type, 4);
        if (len >= 16) std::memcpy(p + 8, &sector, 8);
        return *this;
    }
    ChainBuilder& data(std::uint32_t len, bool writable) {
        add(len, writable);
        return *this;
    }
    ChainBuilder& status(std::uint32_t len = 1, bool writable = true) {
        add(len, writable);
        return *this;
    }
    std::span<const Descriptor> chain() const { return descs_; }
    const Descriptor& operator[](std::size_t i) const { return descs_[i]; }

private:
    std::byte* add(std::uint32_t len, bool writable) {
        storage_.push_back(std::make_unique<std::byte[]>(std::max<std::uint32_t>(len, 1)));
        std::byte* p = storage_.back().get();
        descs_.push_back(Descriptor{GuestAddr(0x1000 * (descs_.size() + 1)), len, writable, p});
        return p;
    }
    std::vector<std::unique_ptr<std::byte[]>> storage_;
    std::vector<Descriptor> descs_;
};

constexpr auto IN = static_cast<std::uint32_t>(RequestType::In);
constexpr auto OUT = static_cast<std::uint32_t>(RequestType::Out);
constexpr auto FLUSH = static_cast<std::uint32_t>(RequestType::Flush);
constexpr auto GET_ID = static_cast<std::uint32_t>(RequestType::GetId);

const DiskGeometry kDisk{100, false, 8};

// ------------------------------------------------------------------------------------------
// Image files.

class TempFile {
public:
    explicit TempFile(std::size_t bytes, std::uint8_t seed = 0) {
        char name[] = "/tmp/ember-virtio-blk-XXXXXX";
        fd_ = ::mkstemp(name);
        REQUIRE(fd_ >= 0);
        path_ = name;
        std::vector<std::uint8_t> init(bytes);
        for (std::size_t i = 0; i < bytes; ++i) init[i] = static_cast<std::uint8_t>(seed + i * 7 + i / 512);
        REQUIRE(::pwrite(fd_, init.data(), init.size(), 0) == static_cast<ssize_t>(init.size()));
    }
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;
    ~TempFile() {
        ::close(fd_);
        ::unlink(path_.c_str());
    }
    const std::string& path() const { return path_; }
    int fd() const { return fd_; }
    UniqueFd open(int flags) const {
        const int fd = ::open(path_.c_str(), flags | O_CLOEXEC);
        REQUIRE(fd >= 0);
        return UniqueFd(fd);
    }
    std::vector<std::uint8_t> contents(std::uint64_t offset, std::size_t len) const {
        std::vector<std::uint8_t> out(len);
        REQUIRE(::pread(fd_, out.data(), len, static_cast<off_t>(offset)) == static_cast<ssize_t>(len));
        return out;
    }
    std::uint64_t size() const {
        struct stat st {};
        REQUIRE(::fstat(fd_, &st) == 0);
        return static_cast<std::uint64_t>(st.st_size);
    }

private:
    int fd_ = -1;
    std::string path_;
};

std::vector<std::uint8_t> pattern(std::size_t n, std::uint8_t seed) {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed ^ (i * 13 + i / 256));
    return v;
}

iovec iov_of(std::vector<std::uint8_t>& v, std::size_t off, std::size_t len) { return iovec{v.data() + off, len}; }

// Polls the backend until `n` completions arrived (or 5 s passed).
std::vector<Completion> wait_completions(Backend& b, std::size_t n) {
    std::vector<Completion> out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    b.kick();
    while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
        if (b.completion_fd() >= 0) {
            pollfd p{b.completion_fd(), POLLIN, 0};
            (void)::poll(&p, 1, 10);
        }
        b.reap(out);
    }
    REQUIRE(out.size() == n);
    return out;
}

const char* engine_name(IoEngine e) { return e == IoEngine::Sync ? "Sync" : "Async"; }

// ------------------------------------------------------------------------------------------
// A virtio-blk device on fake guest RAM behind an MMIO transport, and a driver for it.

constexpr std::uint64_t kF_VERSION_1 = bit(feature::VERSION_1);

struct Posted {
    std::uint16_t head = 0;
    std::uint64_t header = 0;
    std::vector<std::uint64_t> data;
    std::uint64_t status = 0;
};

struct Seg {
    std::uint32_t len;
    bool writable;
};

class BlockRig {
public:
    BlockRig(IoEngine engine, std::size_t file_bytes, bool read_only = false, DriveCacheType cache = DriveCacheType::Unsafe,
             std::string id = "vdisk0", std::uint16_t queue_size = 16, std::optional<RateLimiterConfig> limit = std::nullopt,
             bool copy_on_write = false)
        : file(file_bytes), rings(mem, queue_size) {
        DriveConfig cfg;
        cfg.drive_id = std::move(id);
        cfg.path_on_host = file.path();
        cfg.is_read_only = read_only;
        cfg.cache_type = cache;
        cfg.io_engine = engine;
        cfg.rate_limiter = limit;
        if (copy_on_write) cfg.cow = std::make_shared<CowDisk>(CowDisk::create(file.path(), "/tmp"));
        dev = std::make_shared<BlockDevice>(mem, io, cfg, file.open(read_only || copy_on_write ? O_RDONLY : O_RDWR), file_bytes);
        transport = std::make_unique<MmioTransport>(dev, io);
    }
    ~BlockRig() {
        // The transport and the device go first: their watchers must close before io goes.
        transport.reset();
        dev.reset();
    }

    std::uint32_t rd(std::uint64_t off) {
        std::uint8_t b[4] = {};
        transport->read(off, b);
        std::uint32_t v;
        std::memcpy(&v, b, 4);
        return v;
    }
    void wr(std::uint64_t off, std::uint32_t v) {
        std::uint8_t b[4];
        std::memcpy(b, &v, 4);
        transport->write(off, b);
    }
    std::uint64_t config64(std::uint64_t off) {
        std::uint8_t b[8] = {};
        transport->read(mmio::CONFIG + off, b);
        std::uint64_t v;
        std::memcpy(&v, b, 8);
        return v;
    }
    std::uint64_t offered() {
        wr(mmio::DEVICE_FEATURES_SEL, 0);
        const std::uint64_t lo = rd(mmio::DEVICE_FEATURES);
        wr(mmio::DEVICE_FEATURES_SEL, 1);
        return lo | (std::uint64_t{rd(mmio::DEVICE_FEATURES)} << 32);
    }

    // The Linux driver's sequence: negotiate everything offered except `drop`.
    void bring_up(std::uint64_t drop = 0) {
        wr(mmio::STATUS, status::ACKNOWLEDGE);
        wr(mmio::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        const std::uint64_t features = offered() & ~drop;
        wr(mmio::DRIVER_FEATURES_SEL, 0);
        wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features));
        wr(mmio::DRIVER_FEATURES_SEL, 1);
        wr(mmio::DRIVER_FEATURES, static_cast<std::uint32_t>(features >> 32));
        wr(mmio::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        REQUIRE(rd(mmio::STATUS) == (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        wr(mmio::QUEUE_SEL, 0);
        REQUIRE(rd(mmio::QUEUE_NUM_MAX) == BlockDevice::QUEUE_SIZE);
        wr(mmio::QUEUE_NUM, rings.size());
        wr(mmio::QUEUE_DESC_LOW, static_cast<std::uint32_t>(rings.desc_addr()));
        wr(mmio::QUEUE_DESC_HIGH, 0);
        wr(mmio::QUEUE_DRIVER_LOW, static_cast<std::uint32_t>(rings.avail_addr()));
        wr(mmio::QUEUE_DRIVER_HIGH, 0);
        wr(mmio::QUEUE_DEVICE_LOW, static_cast<std::uint32_t>(rings.used_addr()));
        wr(mmio::QUEUE_DEVICE_HIGH, 0);
        wr(mmio::QUEUE_READY, 1);
        wr(mmio::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        REQUIRE(rd(mmio::STATUS) == (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK));
        REQUIRE(transport->rejected_writes() == 0);
    }

    // Guest buffers come from a bump allocator above the rings.
    std::uint64_t alloc(std::uint64_t len) {
        const std::uint64_t a = next_buf_;
        next_buf_ += (std::max<std::uint64_t>(len, 1) + 0xfff) & ~std::uint64_t{0xfff};
        REQUIRE(next_buf_ <= ember::test::kRamBytes);
        return a;
    }
    void fill(std::uint64_t addr, const std::vector<std::uint8_t>& bytes) {
        REQUIRE(mem.write(GuestAddr(addr), std::as_bytes(std::span(bytes))));
    }
    std::vector<std::uint8_t> guest(std::uint64_t addr, std::size_t len) {
        std::vector<std::uint8_t> out(len);
        REQUIRE(mem.read(GuestAddr(addr), std::as_writable_bytes(std::span(out))));
        return out;
    }
    std::uint8_t status_of(const Posted& p) { return guest(p.status, 1)[0]; }

    // Lays out header, data segments and a status byte (preset to 0xff) as a descriptor chain,
    // directly or through an indirect table, and publishes it.
    Posted post(std::uint32_t type, std::uint64_t sector, const std::vector<Seg>& segs, bool indirect = false) {
        Posted p;
        p.header = alloc(16);
        struct {
            std::uint32_t type, reserved;
            std::uint64_t sector;
        } hdr{type, 0, sector};
        REQUIRE(mem.write_obj(GuestAddr(p.header), hdr));
        for (const auto& s : segs) p.data.push_back(alloc(s.len));
        p.status = alloc(1);
        fill(p.status, {0xff});

        struct Entry {
            std::uint64_t addr;
            std::uint32_t len;
            std::uint16_t flags;
        };
        std::vector<Entry> entries;
        entries.push_back({p.header, 16, 0});
        for (std::size_t i = 0; i < segs.size(); ++i)
            entries.push_back({p.data[i], segs[i].len, segs[i].writable ? desc_flag::WRITE : std::uint16_t{0}});
        entries.push_back({p.status, 1, desc_flag::WRITE});

        if (indirect) {
            const std::uint64_t table = alloc(16 * entries.size());
            for (std::size_t i = 0; i < entries.size(); ++i) {
                const bool last = i + 1 == entries.size();
                rings.set_desc_at(table, static_cast<std::uint16_t>(i), entries[i].addr, entries[i].len,
                                  static_cast<std::uint16_t>(entries[i].flags | (last ? 0 : desc_flag::NEXT)),
                                  static_cast<std::uint16_t>(last ? 0 : i + 1));
            }
            p.head = take_desc();
            rings.set_desc(p.head, table, static_cast<std::uint32_t>(16 * entries.size()), desc_flag::INDIRECT);
        } else {
            std::vector<std::uint16_t> idx;
            for (std::size_t i = 0; i < entries.size(); ++i) idx.push_back(take_desc());
            for (std::size_t i = 0; i < entries.size(); ++i) {
                const bool last = i + 1 == entries.size();
                rings.set_desc(idx[i], entries[i].addr, entries[i].len,
                               static_cast<std::uint16_t>(entries[i].flags | (last ? 0 : desc_flag::NEXT)), last ? std::uint16_t{0} : idx[i + 1]);
            }
            p.head = idx[0];
        }
        rings.publish(p.head);
        return p;
    }

    void notify() { wr(mmio::QUEUE_NOTIFY, 0); }

    // Runs the event loop until `done` or 5 s.
    bool run_until(const std::function<bool()>& done) { return ember::test::run_io_until(io, done); }
    // Notifies and waits until used.idx reaches `n`.
    void complete_until(std::uint16_t n) {
        notify();
        REQUIRE(run_until([&] { return rings.used_idx() == n; }));
        // Nothing more than that arrives.
        io.restart();
        io.poll();
        REQUIRE(rings.used_idx() == n);
    }

    GuestMemory mem = ember::test::make_test_ram();
    boost::asio::io_context io;
    TempFile file;
    DriverRings rings;
    std::shared_ptr<BlockDevice> dev;
    std::unique_ptr<MmioTransport> transport;

private:
    std::uint16_t take_desc() {
        const auto d = static_cast<std::uint16_t>(next_desc_ % rings.size());
        ++next_desc_;
        return d;
    }
    std::uint64_t next_buf_ = 0x10000;
    unsigned next_desc_ = 0;
};

std::uint64_t take_eventfd(int fd) {
    std::uint64_t v = 0;
    const int dup = ::dup(fd);
    REQUIRE(dup >= 0);
    const ssize_t n = ::read(dup, &v, sizeof v);
    ::close(dup);
    return n == static_cast<ssize_t>(sizeof v) ? v : 0;
}

using UsedElem = std::pair<std::uint32_t, std::uint32_t>;

} // namespace

// ==========================================================================================
// parse_request

TEST_CASE("blk parse: valid IN with several data buffers", "[virtio][block]") {
    ChainBuilder c;
    c.header(IN, 10).data(512, true).data(1024, true).status();
    const ParseResult r = parse_request(c.chain(), kDisk);
    CHECK(r.error == RequestError::None);
    CHECK(r.status_value() == S_OK);
    CHECK(r.request.type == RequestType::In);
    CHECK(r.request.sector == 10);
    CHECK(r.request.data_len == 1536);
    REQUIRE(r.request.data.size() == 2);
    CHECK(r.request.data[0].host == c[1].host);
    CHECK(r.request.data[1].host == c[2].host);
    CHECK(r.status == c[3].addr);
}

TEST_CASE("blk parse: valid OUT; the status byte is the last byte of the last descriptor", "[virtio][block]") {
    ChainBuilder c;
    c.header(OUT, 0).data(4096, false).status(8);
    const ParseResult r = parse_request(c.chain(), kDisk);
    CHECK(r.error == RequestError::None);
    CHECK(r.request.type == RequestType::Out);
    CHECK(r.request.data_len == 4096);
    CHECK(r.status == c[2].addr + 7);
}

TEST_CASE("blk parse: a header longer than 16 bytes is fine", "[virtio][block]") {
    ChainBuilder c;
    c.header(IN, 3, 64).data(512, true).status();
    const ParseResult r = parse_request(c.chain(), kDisk);
    CHECK(r.error == RequestError::None);
    CHECK(r.request.sector == 3);
}

TEST_CASE("blk parse: FLUSH carries no data, even when the driver adds buffers", "[virtio][block]") {
    SECTION("plain") {
        ChainBuilder c;
        c.header(FLUSH, 0).status();
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::None);
        CHECK(r.request.type == RequestType::Flush);
        CHECK(r.request.data_len == 0);
        CHECK(r.request.data.empty());
        CHECK(r.status == c[1].addr);
    }
    SECTION("with buffers and a nonsense sector, on a read-only disk") {
        ChainBuilder c;
        c.header(FLUSH, UINT64_MAX).data(3, false).data(7, true).status();
        const ParseResult r = parse_request(c.chain(), DiskGeometry{100, true, 1});
        CHECK(r.error == RequestError::None);
        CHECK(r.request.data_len == 0);
        CHECK(r.request.data.empty());
    }
}

TEST_CASE("blk parse: GET_ID wants device-writable data", "[virtio][block]") {
    SECTION("valid") {
        ChainBuilder c;
        c.header(GET_ID, 0).data(20, true).status();
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::None);
        CHECK(r.request.type == RequestType::GetId);
        CHECK(r.request.data_len == 20);
    }
    SECTION("readable buffer") {
        ChainBuilder c;
        c.header(GET_ID, 0).data(20, false).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::WrongDirection);
    }
    SECTION("no buffer") {
        ChainBuilder c;
        c.header(GET_ID, 0).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::ZeroLength);
    }
}

TEST_CASE("blk parse: sector ranges at the end of the disk and overflowing", "[virtio][block]") {
    const DiskGeometry disk{100, false, 8};
    auto parse = [&](std::uint32_t type, std::uint64_t sector, std::uint32_t len, const DiskGeometry& g) {
        ChainBuilder c;
        c.header(type, sector).data(len, type == IN).status();
        return parse_request(c.chain(), g).error;
    };
    for (auto type : {IN, OUT}) {
        INFO("type " << type);
        CHECK(parse(type, 99, 512, disk) == RequestError::None);          // the last sector
        CHECK(parse(type, 98, 1024, disk) == RequestError::None);         // ending exactly at the end
        CHECK(parse(type, 0, 100 * 512, disk) == RequestError::None);     // the whole disk
        CHECK(parse(type, 99, 1024, disk) == RequestError::OutOfRange);   // one sector past the end
        CHECK(parse(type, 100, 512, disk) == RequestError::OutOfRange);   // starts at the end
        CHECK(parse(type, 0, 101 * 512, disk) == RequestError::OutOfRange);
        CHECK(parse(type, UINT64_MAX, 512, disk) == RequestError::OutOfRange);
        CHECK(parse(type, UINT64_MAX - 1, 1024, disk) == RequestError::OutOfRange);
        // sector * 512 would overflow 64 bits.
        CHECK(parse(type, std::uint64_t{1} << 55, 512, disk) == RequestError::OutOfRange);
        // On a disk of 2^64 - 1 sectors, sector + count must not wrap.
        const DiskGeometry huge{UINT64_MAX, false, 8};
        CHECK(parse(type, UINT64_MAX - 1, 512, huge) == RequestError::None);
        CHECK(parse(type, UINT64_MAX - 1, 1024, huge) == RequestError::OutOfRange);
        CHECK(parse(type, UINT64_MAX, 512, huge) == RequestError::OutOfRange);
        // An empty disk takes nothing.
        CHECK(parse(type, 0, 512, DiskGeometry{0, false, 8}) == RequestError::OutOfRange);
    }
}

TEST_CASE("blk parse: data must be whole sectors and not empty", "[virtio][block]") {
    SECTION("511 bytes") {
        ChainBuilder c;
        c.header(IN, 0).data(511, true).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::NotSectorMultiple);
    }
    SECTION("512 + 100 bytes") {
        ChainBuilder c;
        c.header(OUT, 0).data(512, false).data(100, false).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::NotSectorMultiple);
    }
    SECTION("two half sectors make a whole one") {
        ChainBuilder c;
        c.header(OUT, 0).data(256, false).data(256, false).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::None);
    }
    SECTION("no data buffer") {
        ChainBuilder c;
        c.header(IN, 0).status();
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::ZeroLength);
        CHECK(r.status == c[1].addr);
        CHECK(r.status_value() == S_IOERR);
    }
    SECTION("a zero-length data buffer") {
        ChainBuilder c;
        c.header(OUT, 0).data(0, false).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::ZeroLength);
    }
}

TEST_CASE("blk parse: writes to a read-only disk", "[virtio][block]") {
    const DiskGeometry ro{100, true, 8};
    ChainBuilder w;
    w.header(OUT, 0).data(512, false).status();
    const ParseResult r = parse_request(w.chain(), ro);
    CHECK(r.error == RequestError::ReadOnly);
    CHECK(r.status_value() == S_IOERR);
    CHECK(r.status == w[2].addr); // reported to the driver
    ChainBuilder rd;
    rd.header(IN, 0).data(512, true).status();
    CHECK(parse_request(rd.chain(), ro).error == RequestError::None);
}

TEST_CASE("blk parse: a missing or unusable status descriptor", "[virtio][block]") {
    SECTION("header only") {
        ChainBuilder c;
        c.header(IN, 0);
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::NoStatus);
        CHECK(r.status == std::nullopt);
    }
    SECTION("last descriptor not device-writable") {
        ChainBuilder c;
        c.header(IN, 0).data(512, true).status(1, false);
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::NoStatus);
        CHECK(r.status == std::nullopt);
    }
    SECTION("zero-length status descriptor") {
        ChainBuilder c;
        c.header(IN, 0).data(512, true).status(0, true);
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::NoStatus);
        CHECK(r.status == std::nullopt);
    }
    SECTION("empty chain") {
        const ParseResult r = parse_request({}, kDisk);
        CHECK(r.error == RequestError::NoHeader);
        CHECK(r.status == std::nullopt);
    }
}

TEST_CASE("blk parse: a bad header", "[virtio][block]") {
    SECTION("device-writable header") {
        ChainBuilder c;
        c.header(IN, 0, 16, true).data(512, true).status();
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::NoHeader);
        CHECK(r.status == c[2].addr); // still reported
        CHECK(r.status_value() == S_IOERR);
    }
    SECTION("15-byte header") {
        ChainBuilder c;
        c.header(IN, 0, 15).data(512, true).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::NoHeader);
    }
    SECTION("zero-length header") {
        ChainBuilder c;
        c.header(IN, 0, 0).data(512, true).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::NoHeader);
    }
    SECTION("a single writable descriptor") {
        ChainBuilder c;
        c.status(16);
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::NoHeader);
        CHECK(r.status == std::nullopt);
    }
}

TEST_CASE("blk parse: data buffers in the wrong direction", "[virtio][block]") {
    SECTION("IN into a device-readable buffer") {
        ChainBuilder c;
        c.header(IN, 0).data(512, false).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::WrongDirection);
    }
    SECTION("OUT from a device-writable buffer") {
        ChainBuilder c;
        c.header(OUT, 0).data(512, true).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::WrongDirection);
    }
    SECTION("mixed directions") {
        ChainBuilder c;
        c.header(IN, 0).data(512, true).data(512, false).data(512, true).status();
        CHECK(parse_request(c.chain(), kDisk).error == RequestError::WrongDirection);
    }
}

TEST_CASE("blk parse: no more data buffers than seg_max", "[virtio][block]") {
    const DiskGeometry g{1000, false, 3};
    ChainBuilder ok;
    ok.header(IN, 0).data(512, true).data(512, true).data(512, true).status();
    CHECK(parse_request(ok.chain(), g).error == RequestError::None);
    ChainBuilder bad;
    bad.header(IN, 0).data(512, true).data(512, true).data(512, true).data(512, true).status();
    CHECK(parse_request(bad.chain(), g).error == RequestError::TooManySegments);
}

TEST_CASE("blk parse: unknown request types are unsupported", "[virtio][block]") {
    for (std::uint32_t type : {2u, 3u, 5u, 11u, 13u, 0x80000000u, 0xffffffffu}) {
        INFO("type " << type);
        ChainBuilder c;
        c.header(type, 0).data(512, true).status();
        const ParseResult r = parse_request(c.chain(), kDisk);
        CHECK(r.error == RequestError::Unsupported);
        CHECK(r.status_value() == S_UNSUPP);
        CHECK(r.status_value() == 2);
        CHECK(r.status == c[2].addr);
    }
}

TEST_CASE("blk parse: every error has its own description", "[virtio][block]") {
    std::set<std::string> seen;
    for (auto e : {RequestError::None, RequestError::NoHeader, RequestError::NoStatus, RequestError::WrongDirection,
                   RequestError::NotSectorMultiple, RequestError::ZeroLength, RequestError::OutOfRange, RequestError::TooManySegments,
                   RequestError::ReadOnly, RequestError::Unsupported}) {
        const std::string s = to_string(e);
        CHECK_FALSE(s.empty());
        seen.insert(s);
    }
    CHECK(seen.size() == 10);
}

// ==========================================================================================
// Backends

TEST_CASE("blk backend: writes and reads over several iovecs round-trip", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    TempFile file(64 * 1024);
    UniqueFd fd = file.open(O_RDWR);
    auto b = make_backend(engine, fd.get(), 8, 8);
    CHECK((b->completion_fd() >= 0) == (engine == IoEngine::Async));

    std::vector<std::uint8_t> src = pattern(1024, 0x5a);
    const iovec wv[] = {iov_of(src, 0, 100), iov_of(src, 100, 412), iov_of(src, 512, 512)};
    b->submit(3, Op::Write, 4096, wv);
    auto c = wait_completions(*b, 1);
    CHECK(c[0].tag == 3);
    CHECK(c[0].result == 1024);
    CHECK(b->in_flight() == 0);
    CHECK(file.contents(4096, 1024) == src);
    CHECK(file.contents(4096 + 1024, 16) == TempFile(64 * 1024).contents(4096 + 1024, 16)); // neighbours untouched

    std::vector<std::uint8_t> dst(1536, 0);
    const iovec rv[] = {iov_of(dst, 0, 7), iov_of(dst, 7, 1017), iov_of(dst, 1024, 512)};
    b->submit(5, Op::Read, 4096, rv);
    c = wait_completions(*b, 1);
    CHECK(c[0].tag == 5);
    CHECK(c[0].result == 1536);
    CHECK(std::equal(src.begin(), src.end(), dst.begin()));
    CHECK(std::vector<std::uint8_t>(dst.begin() + 1024, dst.end()) == file.contents(4096 + 1024, 512));
}

TEST_CASE("blk backend: reads past the end of the file fail with EIO", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    // Entirely past the end; straddling it (a short read, then nothing); far past it.
    const std::uint64_t offset = GENERATE(as<std::uint64_t>{}, 8192, 8192 - 256, std::uint64_t{1} << 40);
    INFO("engine " << engine_name(engine) << " offset " << offset);
    TempFile file(8192);
    UniqueFd fd = file.open(O_RDWR);
    auto b = make_backend(engine, fd.get(), 4, 4);
    std::vector<std::uint8_t> dst(512);
    const iovec v[] = {iov_of(dst, 0, 512)};
    b->submit(0, Op::Read, offset, v);
    const auto c = wait_completions(*b, 1);
    CHECK(c[0].tag == 0);
    CHECK(c[0].result == -EIO);
    CHECK(b->in_flight() == 0);
}

TEST_CASE("blk backend: errors come back as negative errno", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    TempFile file(8192);
    UniqueFd ro = file.open(O_RDONLY);
    auto b = make_backend(engine, ro.get(), 4, 4);
    std::vector<std::uint8_t> src = pattern(512, 1);
    const iovec v[] = {iov_of(src, 0, 512)};
    b->submit(2, Op::Write, 0, v);
    const auto c = wait_completions(*b, 1);
    CHECK(c[0].tag == 2);
    CHECK(c[0].result == -EBADF);
    CHECK(file.contents(0, 512) != src);
}

TEST_CASE("blk backend: a flush completes after the writes submitted before it", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    TempFile file(64 * 1024);
    UniqueFd fd = file.open(O_RDWR);
    auto b = make_backend(engine, fd.get(), 8, 4);
    std::vector<std::vector<std::uint8_t>> bufs;
    for (std::uint8_t i = 0; i < 4; ++i) bufs.push_back(pattern(8192, static_cast<std::uint8_t>(0x10 * i + 1)));
    for (std::uint16_t i = 0; i < 4; ++i) {
        const iovec v[] = {iov_of(bufs[i], 0, 4096), iov_of(bufs[i], 4096, 4096)};
        b->submit(i, Op::Write, 8192 * std::uint64_t{i}, v);
    }
    b->submit(7, Op::Flush, 0, {});
    CHECK(b->in_flight() == 5);
    b->kick();
    std::vector<Completion> c;
    b->drain(c);
    CHECK(b->in_flight() == 0);
    REQUIRE(c.size() == 5);
    CHECK(c.back().tag == 7); // nothing was still running when the flush finished
    CHECK(c.back().result == 0);
    std::set<std::uint16_t> tags;
    for (std::size_t i = 0; i + 1 < c.size(); ++i) {
        tags.insert(c[i].tag);
        CHECK(c[i].result == 8192);
    }
    CHECK(tags == std::set<std::uint16_t>{0, 1, 2, 3});
    for (std::uint16_t i = 0; i < 4; ++i) CHECK(file.contents(8192 * std::uint64_t{i}, 8192) == bufs[i]);
}

TEST_CASE("blk backend: every slot in flight at once", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    TempFile file(64 * 1024, 3);
    UniqueFd fd = file.open(O_RDWR);
    auto b = make_backend(engine, fd.get(), 16, 1);
    std::vector<std::vector<std::uint8_t>> dst(16, std::vector<std::uint8_t>(512));
    for (std::uint16_t i = 0; i < 16; ++i) {
        const iovec v[] = {iov_of(dst[i], 0, 512)};
        b->submit(i, Op::Read, 512 * static_cast<std::uint64_t>(15 - i), v);
    }
    const auto c = wait_completions(*b, 16);
    std::set<std::uint16_t> tags;
    for (const auto& x : c) {
        tags.insert(x.tag);
        CHECK(x.result == 512);
    }
    CHECK(tags.size() == 16);
    for (std::uint16_t i = 0; i < 16; ++i) CHECK(dst[i] == file.contents(512 * static_cast<std::uint64_t>(15 - i), 512));
}

TEST_CASE("blk backend: set_fd points later operations at another file", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    TempFile a(8192, 1), other(8192, 2);
    UniqueFd fa = a.open(O_RDWR), fb = other.open(O_RDWR);
    auto b = make_backend(engine, fa.get(), 4, 4);
    b->set_fd(fb.get());
    std::vector<std::uint8_t> src = pattern(512, 9);
    const auto before = a.contents(0, 512);
    const iovec v[] = {iov_of(src, 0, 512)};
    b->submit(1, Op::Write, 0, v);
    const auto c = wait_completions(*b, 1);
    CHECK(c[0].result == 512);
    CHECK(other.contents(0, 512) == src);
    CHECK(a.contents(0, 512) == before);
}

TEST_CASE("blk backend: the async engine signals its completion eventfd", "[virtio][block]") {
    TempFile file(8192);
    UniqueFd fd = file.open(O_RDWR);
    auto b = make_backend(IoEngine::Async, fd.get(), 4, 4);
    REQUIRE(b->completion_fd() >= 0);
    std::vector<std::uint8_t> dst(512);
    const iovec v[] = {iov_of(dst, 0, 512)};
    b->submit(0, Op::Read, 0, v);
    CHECK(b->in_flight() == 1);
    b->kick();
    pollfd p{b->completion_fd(), POLLIN, 0};
    CHECK(::poll(&p, 1, 5000) == 1);
    std::vector<Completion> c;
    b->reap(c);
    REQUIRE(c.size() == 1);
    CHECK(c[0].result == 512);
    CHECK(dst == file.contents(0, 512));
}

// ==========================================================================================
// The device, end to end through the MMIO transport

TEST_CASE("blk device: identification, features and configuration space", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    SECTION("writable, unsafe cache") {
        BlockRig r(engine, 1 << 20);
        CHECK(r.rd(mmio::MAGIC_VALUE) == mmio::MAGIC);
        CHECK(r.rd(mmio::DEVICE_ID) == device_id::BLOCK);
        const std::uint64_t f = r.offered();
        CHECK((f & bit(F_RO)) == 0);
        CHECK((f & bit(F_FLUSH)) == 0);
        CHECK((f & bit(F_SEG_MAX)) != 0);
        CHECK((f & bit(F_BLK_SIZE)) != 0);
        CHECK((f & kF_VERSION_1) != 0);
        CHECK(r.config64(0) == 2048); // capacity in sectors
        CHECK((r.config64(12) & 0xffffffff) == BlockDevice::SEG_MAX);
        CHECK((r.config64(20) & 0xffffffff) == 512);
        std::uint8_t one[1] = {0xaa};
        r.transport->read(mmio::CONFIG + 1, one);
        CHECK(one[0] == 0x08); // 2048 = 0x800, byte 1
        r.transport->read(mmio::CONFIG + 200, one);
        CHECK(one[0] == 0);
        CHECK(r.dev->geometry().capacity_sectors == 2048);
        CHECK(r.dev->name() == "block vdisk0");
    }
    SECTION("read-only, writeback cache") {
        BlockRig r(engine, 64 * 1024, true, DriveCacheType::Writeback);
        const std::uint64_t f = r.offered();
        CHECK((f & bit(F_RO)) != 0);
        CHECK((f & bit(F_FLUSH)) != 0);
        CHECK(r.config64(0) == 128);
        CHECK(r.dev->geometry().read_only);
    }
}

TEST_CASE("blk device: writes then reads through the queue", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    const bool event_idx = GENERATE(false, true);
    INFO("engine " << engine_name(engine) << " event_idx " << event_idx);
    BlockRig r(engine, 1 << 20);
    r.bring_up(event_idx ? 0 : bit(feature::RING_EVENT_IDX));
    r.io.restart();
    r.io.poll(); // the kick DRIVER_OK gives finds nothing to do
    CHECK(r.rings.used_idx() == 0);
    (void)take_eventfd(r.dev->irq_fd());

    // Write 3 sectors at sector 8 from two buffers.
    const auto w = r.post(OUT, 8, {{512, false}, {1024, false}});
    const auto data = pattern(1536, 0x33);
    r.fill(w.data[0], std::vector<std::uint8_t>(data.begin(), data.begin() + 512));
    r.fill(w.data[1], std::vector<std::uint8_t>(data.begin() + 512, data.end()));
    r.complete_until(1);
    CHECK(r.status_of(w) == S_OK);
    CHECK(r.rings.nth_used(0) == UsedElem{w.head, 1});
    CHECK(r.file.contents(8 * 512, 1536) == data);
    CHECK((r.rd(mmio::INTERRUPT_STATUS) & INT_USED_RING) != 0);
    CHECK(take_eventfd(r.dev->irq_fd()) >= 1);
    r.wr(mmio::INTERRUPT_ACK, INT_USED_RING);

    // Read sectors 7..10 back into three buffers.
    const auto rd = r.post(IN, 7, {{512, true}, {1024, true}, {512, true}});
    if (event_idx) r.rings.set_used_event(1);
    r.complete_until(2);
    CHECK(r.status_of(rd) == S_OK);
    CHECK(r.rings.nth_used(1) == UsedElem{rd.head, 1 + 2048});
    const auto expect = r.file.contents(7 * 512, 2048);
    CHECK(r.guest(rd.data[0], 512) == std::vector<std::uint8_t>(expect.begin(), expect.begin() + 512));
    CHECK(r.guest(rd.data[1], 1024) == std::vector<std::uint8_t>(expect.begin() + 512, expect.begin() + 1536));
    CHECK(r.guest(rd.data[2], 512) == std::vector<std::uint8_t>(expect.begin() + 1536, expect.end()));
    CHECK(std::equal(data.begin(), data.end(), expect.begin() + 512));
    CHECK((r.rd(mmio::INTERRUPT_STATUS) & INT_USED_RING) != 0);

    const BlockMetrics& m = r.dev->metrics();
    CHECK(m.write_count == 1);
    CHECK(m.write_bytes == 1536);
    CHECK(m.read_count == 1);
    CHECK(m.read_bytes == 2048);
    CHECK(m.invalid_reqs_count == 0);
    CHECK(m.execute_fails == 0);
    if (event_idx) CHECK(r.rings.avail_event() == 2); // notifications re-enabled past what was consumed
}

TEST_CASE("blk device: requests through indirect tables and a full queue at once", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 1 << 20, false, DriveCacheType::Unsafe, "vdisk0", 16);
    r.bring_up();
    std::vector<Posted> posted;
    for (std::uint16_t i = 0; i < 16; ++i) {
        const bool write = i % 2 == 0;
        posted.push_back(r.post(write ? OUT : IN, 100u + i, {{512, !write}}, true));
        if (write) r.fill(posted.back().data[0], pattern(512, static_cast<std::uint8_t>(i)));
    }
    r.complete_until(16);
    std::set<std::uint32_t> heads;
    for (std::uint16_t i = 0; i < 16; ++i) {
        INFO("request " << i);
        CHECK(r.status_of(posted[i]) == S_OK);
        heads.insert(r.rings.nth_used(i).first);
        if (i % 2 == 0) CHECK(r.file.contents(512 * (100u + i), 512) == pattern(512, static_cast<std::uint8_t>(i)));
        else CHECK(r.guest(posted[i].data[0], 512) == r.file.contents(512 * (100u + i), 512));
    }
    CHECK(heads.size() == 16);
    CHECK(r.dev->metrics().write_count == 8);
    CHECK(r.dev->metrics().read_count == 8);
}

TEST_CASE("blk device: GET_ID returns the drive id, zero-padded or truncated to 20 bytes", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    SECTION("short id into a 20-byte buffer") {
        BlockRig r(engine, 64 * 1024, false, DriveCacheType::Unsafe, "rootfs");
        r.bring_up();
        const auto p = r.post(GET_ID, 0, {{20, true}});
        r.fill(p.data[0], std::vector<std::uint8_t>(20, 0xee));
        r.complete_until(1);
        CHECK(r.status_of(p) == S_OK);
        std::vector<std::uint8_t> expect(20, 0);
        std::memcpy(expect.data(), "rootfs", 6);
        CHECK(r.guest(p.data[0], 20) == expect);
        CHECK(r.rings.nth_used(0).second == 21);
    }
    SECTION("long id into split buffers") {
        BlockRig r(engine, 64 * 1024, false, DriveCacheType::Unsafe, "abcdefghijklmnopqrstuvwxyz");
        r.bring_up();
        const auto p = r.post(GET_ID, 0, {{8, true}, {32, true}});
        r.fill(p.data[1], std::vector<std::uint8_t>(32, 0xee));
        r.complete_until(1);
        CHECK(r.status_of(p) == S_OK);
        const auto a = r.guest(p.data[0], 8);
        const auto b = r.guest(p.data[1], 32);
        CHECK(std::string(a.begin(), a.end()) == "abcdefgh");
        CHECK(std::string(b.begin(), b.begin() + 12) == "ijklmnopqrst");
        CHECK(std::all_of(b.begin() + 12, b.end(), [](std::uint8_t x) { return x == 0xee; })); // past 20 bytes: untouched
        CHECK(r.rings.nth_used(0).second == 21);
    }
    SECTION("buffer shorter than the id") {
        BlockRig r(engine, 64 * 1024, false, DriveCacheType::Unsafe, "rootfs");
        r.bring_up();
        const auto p = r.post(GET_ID, 0, {{4, true}});
        r.complete_until(1);
        CHECK(r.status_of(p) == S_OK);
        const auto a = r.guest(p.data[0], 4);
        CHECK(std::string(a.begin(), a.end()) == "root");
        CHECK(r.rings.nth_used(0).second == 5);
    }
}

TEST_CASE("blk device: a read-only drive refuses writes with IOERR", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 64 * 1024, true);
    CHECK((r.offered() & bit(F_RO)) != 0);
    r.bring_up();
    const auto before = r.file.contents(0, 1024);
    const auto w = r.post(OUT, 0, {{1024, false}});
    r.fill(w.data[0], pattern(1024, 0x77));
    r.complete_until(1);
    CHECK(r.status_of(w) == S_IOERR);
    CHECK(r.rings.nth_used(0) == UsedElem{w.head, 1});
    CHECK(r.file.contents(0, 1024) == before);
    CHECK(r.dev->metrics().invalid_reqs_count == 1);
    CHECK(r.dev->metrics().write_count == 0);
    // Reads still work.
    const auto rd = r.post(IN, 0, {{1024, true}});
    r.complete_until(2);
    CHECK(r.status_of(rd) == S_OK);
    CHECK(r.guest(rd.data[0], 1024) == before);
}

TEST_CASE("blk device: refused requests report IOERR or UNSUPP and the queue goes on", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 64 * 1024); // 128 sectors
    r.bring_up();
    const auto past = r.post(IN, 128, {{512, true}});
    const auto straddle = r.post(OUT, 127, {{1024, false}});
    const auto odd = r.post(IN, 0, {{100, true}});
    const auto unknown = r.post(11, 0, {{512, true}}); // DISCARD: not offered
    const auto good = r.post(IN, 127, {{512, true}});
    r.complete_until(5);
    CHECK(r.status_of(past) == S_IOERR);
    CHECK(r.status_of(straddle) == S_IOERR);
    CHECK(r.status_of(odd) == S_IOERR);
    CHECK(r.status_of(unknown) == S_UNSUPP);
    CHECK(r.status_of(good) == S_OK);
    for (std::uint16_t i = 0; i < 4; ++i) CHECK(r.rings.nth_used(i).second == 1);
    CHECK(r.dev->metrics().invalid_reqs_count == 4);
    CHECK(r.dev->running());
}

TEST_CASE("blk device: a malformed chain is returned unused; a broken ring needs a reset", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 64 * 1024);
    r.bring_up();
    // A descriptor loop at 14 <-> 15, then a good request.
    r.rings.set_desc(14, 0x10000, 16, desc_flag::NEXT, 15);
    r.rings.set_desc(15, 0x10000, 16, desc_flag::NEXT, 14);
    r.rings.publish(14);
    const auto good = r.post(IN, 0, {{512, true}});
    r.complete_until(2);
    CHECK(r.rings.nth_used(0) == UsedElem{14, 0});
    CHECK(r.status_of(good) == S_OK);
    CHECK(r.dev->metrics().invalid_reqs_count == 1);
    CHECK(r.dev->running());
    CHECK((r.rd(mmio::STATUS) & status::DEVICE_NEEDS_RESET) == 0);

    // A head beyond the queue breaks the protocol.
    r.rings.publish(16);
    r.notify();
    CHECK(r.run_until([&] { return (r.rd(mmio::STATUS) & status::DEVICE_NEEDS_RESET) != 0; }));
    CHECK_FALSE(r.dev->running());
    CHECK((r.rd(mmio::INTERRUPT_STATUS) & INT_CONFIG) != 0);
    CHECK(r.dev->metrics().event_fails == 1);
    CHECK(r.rings.used_idx() == 2);
}

TEST_CASE("blk device: flush", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    const DriveCacheType cache = GENERATE(DriveCacheType::Unsafe, DriveCacheType::Writeback);
    INFO("engine " << engine_name(engine) << " writeback " << (cache == DriveCacheType::Writeback));
    BlockRig r(engine, 64 * 1024, false, cache);
    r.bring_up();
    const auto w = r.post(OUT, 4, {{4096, false}});
    r.fill(w.data[0], pattern(4096, 0x42));
    const auto fl = r.post(FLUSH, 0, {});
    r.complete_until(2);
    CHECK(r.status_of(w) == S_OK);
    CHECK(r.status_of(fl) == S_OK);
    CHECK(r.dev->metrics().flush_count == 1);
    CHECK(r.file.contents(4 * 512, 4096) == pattern(4096, 0x42));
    // The flush's used length is the status byte alone.
    const UsedElem a = r.rings.nth_used(0), b = r.rings.nth_used(1);
    CHECK((a.first == fl.head ? a.second : b.second) == 1);
}

TEST_CASE("blk device: I/O errors from the image report IOERR", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 64 * 1024);
    r.bring_up();
    // The image shrinks under the device: the last sectors are past the end of the file now.
    REQUIRE(::ftruncate(r.file.fd(), 32 * 1024) == 0);
    const auto p = r.post(IN, 100, {{512, true}});
    r.complete_until(1);
    CHECK(r.status_of(p) == S_IOERR);
    CHECK(r.rings.nth_used(0) == UsedElem{p.head, 1});
    CHECK(r.dev->metrics().execute_fails == 1);
    CHECK(r.dev->metrics().read_count == 0);
}

TEST_CASE("blk device: reset with requests in flight, then a fresh start", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 1 << 20);
    r.bring_up();
    std::vector<Posted> posted;
    for (std::uint16_t i = 0; i < 4; ++i) {
        posted.push_back(r.post(OUT, 16u * i, {{8192, false}}));
        r.fill(posted.back().data[0], pattern(8192, static_cast<std::uint8_t>(i + 1)));
    }
    {
        // Started directly on this thread, as the event loop would, so that they are in flight.
        std::lock_guard lk(r.dev->mutex());
        r.dev->process_queue(0);
    }
    r.wr(mmio::STATUS, 0); // waits for the in-flight writes
    CHECK(r.rd(mmio::STATUS) == 0);
    for (std::uint16_t i = 0; i < 4; ++i) CHECK(r.file.contents(16 * 512 * std::uint64_t{i}, 8192) == pattern(8192, static_cast<std::uint8_t>(i + 1)));
    r.io.restart();
    r.io.poll(); // a late completion event finds nothing to do
    CHECK_FALSE(r.dev->running());

    // Brought up again on new rings, every slot is free again.
    r.rings = DriverRings(r.mem, 16, 0x5000, 0x6000, 0x7000);
    r.bring_up();
    const auto p = r.post(IN, 0, {{8192, true}});
    r.complete_until(1);
    CHECK(r.status_of(p) == S_OK);
    CHECK(r.guest(p.data[0], 8192) == pattern(8192, 1));
}

TEST_CASE("blk device: replacing the image changes the capacity and raises a config change", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 64 * 1024);
    r.bring_up();
    const std::uint32_t gen = r.rd(mmio::CONFIG_GENERATION);
    TempFile bigger(128 * 1024, 0x99);
    r.dev->replace_file(bigger.open(O_RDWR), 128 * 1024, bigger.path());
    CHECK(r.config64(0) == 256);
    CHECK(r.rd(mmio::CONFIG_GENERATION) == gen + 1);
    CHECK((r.rd(mmio::INTERRUPT_STATUS) & INT_CONFIG) != 0);
    CHECK(r.dev->config().path_on_host == bigger.path());
    CHECK(r.dev->metrics().update_count == 1);
    const auto p = r.post(IN, 200, {{512, true}});
    r.complete_until(1);
    CHECK(r.status_of(p) == S_OK);
    CHECK(r.guest(p.data[0], 512) == bigger.contents(200 * 512, 512));
}

TEST_CASE("blk device: a copy-on-write drive never writes its image", "[virtio][block][cow]") {
    BlockRig r(IoEngine::Async, 256 * 1024, false, DriveCacheType::Writeback, "vdisk0", 16, std::nullopt, true);
    CHECK(r.dev->config().io_engine == IoEngine::Sync); // what runs: the CoW engine is synchronous
    r.bring_up();
    const auto image = r.file.contents(0, 256 * 1024);
    auto disk = image;
    // Sectors 7..9: the end of one 4 KiB cluster and the start of the next.
    const auto data = pattern(1536, 0x5c);
    const auto w = r.post(OUT, 7, {{1024, false}, {512, false}});
    r.fill(w.data[0], std::vector<std::uint8_t>(data.begin(), data.begin() + 1024));
    r.fill(w.data[1], std::vector<std::uint8_t>(data.begin() + 1024, data.end()));
    const auto fl = r.post(FLUSH, 0, {});
    r.complete_until(2);
    CHECK(r.status_of(w) == S_OK);
    CHECK(r.status_of(fl) == S_OK);
    std::copy(data.begin(), data.end(), disk.begin() + 7 * 512);
    const auto rd = r.post(IN, 4, {{2048, true}, {2048, true}});
    r.complete_until(3);
    CHECK(r.status_of(rd) == S_OK);
    CHECK(r.guest(rd.data[0], 2048) == std::vector<std::uint8_t>(disk.begin() + 4 * 512, disk.begin() + 8 * 512));
    CHECK(r.guest(rd.data[1], 2048) == std::vector<std::uint8_t>(disk.begin() + 8 * 512, disk.begin() + 12 * 512));
    CHECK(r.file.contents(0, 256 * 1024) == image);
    // Another image is refused: the drive keeps its disk and capacity.
    TempFile other(128 * 1024, 0x77);
    r.dev->replace_file(other.open(O_RDWR), 128 * 1024, other.path());
    CHECK(r.dev->metrics().update_fails == 1);
    CHECK(r.dev->metrics().update_count == 0);
    CHECK(r.config64(0) == 512);
    CHECK(r.dev->config().path_on_host == r.file.path());
    // What --keep-disk writes.
    const std::string out = r.file.path() + ".keep";
    r.dev->config().cow->export_to(out);
    std::vector<std::uint8_t> kept(disk.size());
    const int fd = ::open(out.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    CHECK(::pread(fd, kept.data(), kept.size(), 0) == static_cast<ssize_t>(kept.size()));
    ::close(fd);
    ::unlink(out.c_str());
    CHECK(kept == disk);
}

namespace {
// Makes io_uring setup fail with `err` for the scope (a container seccomp profile blocking it).
struct IoUringBlocked {
    explicit IoUringBlocked(int err) { ember::Ring::fail_setup_for_testing(err); }
    ~IoUringBlocked() { ember::Ring::fail_setup_for_testing(0); }
    IoUringBlocked(const IoUringBlocked&) = delete;
    IoUringBlocked& operator=(const IoUringBlocked&) = delete;
};
} // namespace

TEST_CASE("blk device: io_uring refused at setup falls back to the Sync engine", "[virtio][block]") {
    const int err = GENERATE(EPERM, ENOSYS);
    INFO("io_uring_setup fails with errno " << err);
    IoUringBlocked blocked(err);
    CHECK_THROWS_AS(make_backend(IoEngine::Async, 0, 4, 4), ember::SystemError); // the hook works
    BlockRig r(IoEngine::Async, 64 * 1024);
    CHECK(r.dev->config().io_engine == IoEngine::Sync); // what runs, as GET /vm/config shows it
    r.bring_up();
    const auto w = r.post(OUT, 2, {{512, false}});
    r.fill(w.data[0], pattern(512, 0x5a));
    r.complete_until(1);
    CHECK(r.status_of(w) == S_OK);
    CHECK(r.file.contents(2 * 512, 512) == pattern(512, 0x5a));
    const auto rd = r.post(IN, 2, {{512, true}});
    r.complete_until(2);
    CHECK(r.status_of(rd) == S_OK);
    CHECK(r.guest(rd.data[0], 512) == pattern(512, 0x5a));
}

TEST_CASE("blk device: without the hook an Async drive keeps io_uring", "[virtio][block]") {
    BlockRig r(IoEngine::Async, 64 * 1024);
    CHECK(r.dev->config().io_engine == IoEngine::Async);
}

TEST_CASE("blk device: an image that is not whole sectors shows the whole sectors only", "[virtio][block]") {
    // Firecracker's DiskProperties: nsectors = size >> 9, the tail is invisible (and warned about).
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    BlockRig r(engine, 3 * 512 + 100);
    CHECK(r.config64(0) == 3);
    r.bring_up();
    const auto last = r.post(IN, 2, {{512, true}});
    r.complete_until(1);
    CHECK(r.status_of(last) == S_OK);
    CHECK(r.guest(last.data[0], 512) == r.file.contents(2 * 512, 512));
    const auto tail = r.post(IN, 3, {{512, true}}); // the partial sector is past the end
    r.complete_until(2);
    CHECK(r.status_of(tail) == S_IOERR);
    const auto tail_before = r.file.contents(3 * 512, 100);
    const auto w = r.post(OUT, 3, {{512, false}});
    r.fill(w.data[0], pattern(512, 1));
    r.complete_until(3);
    CHECK(r.status_of(w) == S_IOERR);
    CHECK(r.file.contents(3 * 512, 100) == tail_before); // the tail bytes are untouched
}

TEST_CASE("blk device: a rate-limited queue waits for its timer and loses nothing", "[virtio][block]") {
    const IoEngine engine = GENERATE(IoEngine::Sync, IoEngine::Async);
    INFO("engine " << engine_name(engine));
    // 2 operations per 200 ms, starting full: 2 requests at once, then one per 100 ms.
    BlockRig r(engine, 1 << 20, false, DriveCacheType::Unsafe, "vdisk0", 16,
               RateLimiterConfig{std::nullopt, TokenBucketConfig{2, 0, 200}});
    r.bring_up();
    std::vector<Posted> posted;
    for (std::uint16_t i = 0; i < 5; ++i) posted.push_back(r.post(IN, i, {{512, true}}));
    const auto t0 = std::chrono::steady_clock::now();
    r.notify();
    REQUIRE(r.run_until([&] { return r.rings.used_idx() >= 2; }));
    // The third waits for a refill: nothing more completes at once.
    r.io.restart();
    r.io.poll();
    CHECK(r.rings.used_idx() == 2);
    CHECK(r.dev->metrics().rate_limiter_throttled_events >= 1);
    // The limiter's timer resumes the queue without another notification.
    REQUIRE(r.run_until([&] { return r.rings.used_idx() == 5; }));
    const auto took = std::chrono::steady_clock::now() - t0;
    CHECK(took >= std::chrono::milliseconds(250)); // 3 more ops at 10 ops/s
    for (const auto& p : posted) CHECK(r.status_of(p) == S_OK);
    CHECK(r.dev->metrics().read_count == 5);
    CHECK(r.dev->metrics().rate_limiter_event_count >= 1);
    REQUIRE(r.dev->config().rate_limiter);
    CHECK(r.dev->config().rate_limiter->ops == TokenBucketConfig{2, 0, 200});

    // Lifting the limit (PATCH /drives: size 0) lets a burst straight through.
    const auto now = r.dev->update_rate_limiter({std::nullopt, TokenBucketConfig{0, 0, 0}});
    CHECK_FALSE(now);
    CHECK_FALSE(r.dev->config().rate_limiter);
    const auto throttled = r.dev->metrics().rate_limiter_throttled_events.load();
    for (std::uint16_t i = 0; i < 8; ++i) posted.push_back(r.post(IN, 10u + i, {{512, true}}));
    r.complete_until(13);
    CHECK(r.dev->metrics().rate_limiter_throttled_events == throttled);
}

TEST_CASE("blk device: a PATCH lifting the limit serves the held-back requests at once", "[virtio][block]") {
    // 1 op per hour: the second request would wait an hour.
    BlockRig r(IoEngine::Sync, 1 << 20, false, DriveCacheType::Unsafe, "vdisk0", 16,
               RateLimiterConfig{std::nullopt, TokenBucketConfig{1, 0, 3'600'000}});
    r.bring_up();
    const auto a = r.post(IN, 0, {{512, true}});
    const auto b = r.post(IN, 1, {{512, true}});
    r.notify();
    REQUIRE(r.run_until([&] { return r.rings.used_idx() >= 1; }));
    r.io.restart();
    r.io.poll();
    CHECK(r.rings.used_idx() == 1);
    CHECK(r.dev->metrics().rate_limiter_throttled_events >= 1);
    (void)r.dev->update_rate_limiter({std::nullopt, TokenBucketConfig{0, 0, 0}});
    REQUIRE(r.run_until([&] { return r.rings.used_idx() == 2; }));
    CHECK(r.status_of(a) == S_OK);
    CHECK(r.status_of(b) == S_OK);
}

TEST_CASE("blk device: a bandwidth limit counts the bytes of reads and writes only", "[virtio][block]") {
    // 4 KiB per second: a 4 KiB read empties the bucket; a flush (no bytes) still goes through.
    BlockRig r(IoEngine::Sync, 1 << 20, false, DriveCacheType::Writeback, "vdisk0", 16,
               RateLimiterConfig{TokenBucketConfig{4096, 0, 1000}, std::nullopt});
    r.bring_up();
    const auto rd = r.post(IN, 0, {{4096, true}});
    r.complete_until(1);
    CHECK(r.status_of(rd) == S_OK);
    const auto fl = r.post(FLUSH, 0, {});
    r.complete_until(2);
    CHECK(r.status_of(fl) == S_OK);
    const auto rd2 = r.post(IN, 8, {{512, true}});
    r.notify();
    r.io.restart();
    r.io.poll();
    CHECK(r.rings.used_idx() == 2); // no bytes left: waits
    CHECK(r.dev->metrics().rate_limiter_throttled_events == 1);
    REQUIRE(r.run_until([&] { return r.rings.used_idx() == 3; }));
    CHECK(r.status_of(rd2) == S_OK);
}
