// virtio-console (virtio 1.2 §5.3): the configuration space and transmit chain checks
// (devices/virtio/console/request.hpp), the non-blocking host output (vmm/base/console_output.hpp) and
// the device driven end to end through split rings in fake guest RAM (console/device.hpp).

#include "vmm/base/console_output.hpp"
#include "devices/virtio/console/device.hpp"
#include "devices/virtio/console/request.hpp"
#include "devices/virtio/spec.hpp"
#include "test_util.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/unique_fd.hpp"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio;
using namespace ember::virtio::console;
using ember::test::DriverRings;

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes pattern(std::size_t n, std::uint8_t seed = 1) {
    Bytes v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::uint8_t>(seed + i * 13 + i / 251);
    return v;
}
Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }
Bytes prefix(const Bytes& v, std::size_t n) { return Bytes(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)); }
// "" when equal, else where they first differ (Catch would print both buffers whole).
std::string mismatch(const Bytes& got, const Bytes& want) {
    if (got == want) return "";
    std::size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    return "got " + std::to_string(got.size()) + " bytes, want " + std::to_string(want.size()) + ", first difference at " +
           std::to_string(i);
}

// ------------------------------------------------------------------------------------------
// Host files and pipes.

using ember::test::TempDir;

Bytes read_file(const std::string& path) {
    Bytes out;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    std::uint8_t buf[4096];
    for (;;) {
        const ssize_t n = ::read(fd, buf, sizeof buf);
        REQUIRE(n >= 0);
        if (n == 0) break;
        out.insert(out.end(), buf, buf + n);
    }
    ::close(fd);
    return out;
}

int fd_flags(int fd) {
    const int f = ::fcntl(fd, F_GETFL);
    REQUIRE(f >= 0);
    return f;
}

// A pipe whose read end is non-blocking, so the test can take whatever is there.
struct Pipe {
    UniqueFd rd, wr;
    Pipe() {
        int fds[2];
        REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
        rd.reset(fds[0]);
        wr.reset(fds[1]);
        REQUIRE(::fcntl(rd.get(), F_SETFL, O_NONBLOCK) == 0);
    }
    // Sets the pipe's capacity (rounded up by the kernel) and returns it.
    std::size_t resize(int bytes) const {
        (void)::fcntl(rd.get(), F_SETPIPE_SZ, bytes);
        const int n = ::fcntl(rd.get(), F_GETPIPE_SZ);
        REQUIRE(n > 0);
        return static_cast<std::size_t>(n);
    }
    std::size_t capacity() const {
        const int n = ::fcntl(rd.get(), F_GETPIPE_SZ);
        REQUIRE(n > 0);
        return static_cast<std::size_t>(n);
    }
    // Appends what the pipe holds now, at most `max` bytes.
    std::size_t take(Bytes& out, std::size_t max = SIZE_MAX) const {
        std::size_t got = 0;
        std::uint8_t buf[8192];
        while (got < max) {
            const ssize_t n = ::read(rd.get(), buf, std::min(sizeof buf, max - got));
            if (n <= 0) {
                REQUIRE((n == 0 || errno == EAGAIN || errno == EINTR));
                if (n < 0 && errno == EINTR) continue;
                break;
            }
            out.insert(out.end(), buf, buf + n);
            got += static_cast<std::size_t>(n);
        }
        return got;
    }
};

// SIGPIPE ignored for the scope, as main() does for the whole process.
class IgnoreSigpipe {
public:
    IgnoreSigpipe() : old_(std::signal(SIGPIPE, SIG_IGN)) {}
    IgnoreSigpipe(const IgnoreSigpipe&) = delete;
    IgnoreSigpipe& operator=(const IgnoreSigpipe&) = delete;
    ~IgnoreSigpipe() { std::signal(SIGPIPE, old_); }

private:
    void (*old_)(int);
};

// Runs ready handlers; a stopped context (out of work) is restarted first.
void pump(boost::asio::io_context& io, std::chrono::milliseconds wait = std::chrono::milliseconds(0)) {
    if (io.stopped()) io.restart();
    if (wait.count() > 0)
        io.run_for(wait);
    else
        io.poll();
}

// Reads the pipe while the event loop flushes, until `want` bytes arrived or 5 s passed.
Bytes collect(boost::asio::io_context& io, const Pipe& p, std::size_t want) {
    Bytes got;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
        p.take(got);
        pump(io, std::chrono::milliseconds(5));
    }
    p.take(got);
    return got;
}

// A ConsoleOutput on the pipe's write end, which must have been made non-blocking: a blocking
// one would hang the test's writes instead of failing them.
std::unique_ptr<ConsoleOutput> pipe_output(boost::asio::io_context& io, Pipe& p, std::size_t capacity) {
    const int raw = p.wr.get();
    auto out = std::make_unique<ConsoleOutput>(io, std::move(p.wr), capacity);
    REQUIRE((fd_flags(raw) & O_NONBLOCK) != 0);
    return out;
}

std::uint64_t offered_total(const ConsoleOutput& out) {
    const OutputMetrics& m = out.metrics();
    return m.bytes_written.load() + m.bytes_dropped.load() + out.buffered();
}

// ------------------------------------------------------------------------------------------
// Descriptors over buffers this test owns (for the pure functions).

class Chain {
public:
    Chain& readable(const std::string& s) { return add(s, false); }
    Chain& writable(std::uint32_t len) { return add(std::string(len, '\0'), true); }
    std::span<const Descriptor> span() const { return descs_; }
    const Descriptor& operator[](std::size_t i) const { return descs_[i]; }

private:
    Chain& add(const std::string& s, bool writable) {
        storage_.push_back(std::make_unique<std::byte[]>(std::max<std::size_t>(s.size(), 1)));
        std::memcpy(storage_.back().get(), s.data(), s.size());
        descs_.push_back(Descriptor{GuestAddr(0x1000 * (descs_.size() + 1)), static_cast<std::uint32_t>(s.size()), writable,
                                    storage_.back().get()});
        return *this;
    }
    std::vector<std::unique_ptr<std::byte[]>> storage_;
    std::vector<Descriptor> descs_;
};

std::string gathered(const std::vector<iovec>& iov) {
    std::string s;
    for (const auto& v : iov) s.append(static_cast<const char*>(v.iov_base), v.iov_len);
    return s;
}

// ------------------------------------------------------------------------------------------
// A ConsoleDevice on fake guest RAM, driven as Linux's virtio_console driver drives it: status
// writes and feature negotiation (§3.1.1), receiveq0 and transmitq0 (§5.3.2), notifications.

constexpr std::uint32_t kRunning = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
constexpr std::uint64_t kEventIdx = bit(feature::RING_EVENT_IDX);
constexpr std::uint64_t kSizeFeature = bit(F_SIZE);

struct Seg {
    std::string bytes; // contents (device-readable) or initial contents (device-writable)
    bool writable = false;
    std::uint32_t len = UINT32_MAX; // UINT32_MAX: bytes.size()
};
Seg out_seg(std::string s) { return Seg{std::move(s), false}; }
Seg in_seg(std::uint32_t len) { return Seg{std::string(len, '.'), true}; }

struct Posted {
    std::uint16_t head = 0;
    std::vector<std::uint64_t> addrs;
};

class ConsoleRig {
public:
    ConsoleRig(UniqueFd fd, std::optional<ConsoleSize> size, std::size_t capacity = ConsoleOutput::DEFAULT_CAPACITY)
        : out(std::make_shared<ConsoleOutput>(io, std::move(fd), capacity)), dev(std::make_unique<ConsoleDevice>(mem, out, size)) {}
    ~ConsoleRig() {
        dev.reset();
        out.reset();
    }

    void bring_up(std::uint64_t drop = 0) {
        REQUIRE(dev->write_status(status::ACKNOWLEDGE));
        REQUIRE(dev->write_status(status::ACKNOWLEDGE | status::DRIVER));
        const std::uint64_t f = dev->offered_features() & ~drop;
        REQUIRE(dev->write_driver_features(0, static_cast<std::uint32_t>(f)));
        REQUIRE(dev->write_driver_features(1, static_cast<std::uint32_t>(f >> 32)));
        REQUIRE(dev->write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        REQUIRE(dev->state().status == (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        REQUIRE(dev->queue_config_writable());
        rx.program(dev->queues()[ConsoleDevice::RX]);
        tx.program(dev->queues()[ConsoleDevice::TX]);
        REQUIRE(dev->write_status(kRunning));
        REQUIRE(dev->state().status == kRunning);
        REQUIRE(dev->running());
    }

    std::uint64_t alloc(std::uint64_t len) {
        const std::uint64_t a = next_buf_;
        next_buf_ += (std::max<std::uint64_t>(len, 1) + 0xff) & ~std::uint64_t{0xff};
        REQUIRE(next_buf_ <= ember::test::kRamBytes);
        return a;
    }

    // Lays `segs` out as one chain in `rings` and publishes it.
    Posted post(DriverRings& rings, const std::vector<Seg>& segs) {
        Posted p;
        std::vector<std::uint16_t> idx;
        for (std::size_t i = 0; i < segs.size(); ++i) {
            idx.push_back(static_cast<std::uint16_t>(next_desc_[&rings == &tx] % rings.size()));
            ++next_desc_[&rings == &tx];
        }
        for (std::size_t i = 0; i < segs.size(); ++i) {
            const Seg& s = segs[i];
            const std::uint32_t len = s.len == UINT32_MAX ? static_cast<std::uint32_t>(s.bytes.size()) : s.len;
            const std::uint64_t a = alloc(std::max<std::uint64_t>(len, s.bytes.size()));
            REQUIRE(mem.write(GuestAddr(a), std::as_bytes(std::span(s.bytes))));
            p.addrs.push_back(a);
            const bool last = i + 1 == segs.size();
            const auto flags = static_cast<std::uint16_t>((s.writable ? desc_flag::WRITE : 0) | (last ? 0 : desc_flag::NEXT));
            rings.set_desc(idx[i], a, len, flags, last ? std::uint16_t{0} : idx[i + 1]);
        }
        p.head = idx.front();
        rings.publish(p.head);
        return p;
    }
    Posted post_tx(const std::vector<Seg>& segs) { return post(tx, segs); }
    Posted post_rx(const std::vector<Seg>& segs) { return post(rx, segs); }

    std::string guest(std::uint64_t addr, std::size_t len) const {
        std::string s(len, '\0');
        REQUIRE(mem.read(GuestAddr(addr), std::as_writable_bytes(std::span(s))));
        return s;
    }

    // A queue notification as the MMIO transport delivers it: under the device lock, and only
    // to a running device's active queue.
    void notify(std::size_t q) {
        std::lock_guard lk(dev->mutex());
        if (dev->running() && dev->queues()[q].active()) dev->process_queue(q);
    }
    // Serves the notifications waiting on the queues' eventfds (DRIVER_OK raises one per active
    // queue, for chains queued before it); returns how many queues had one.
    unsigned serve_notifications() {
        unsigned n = 0;
        for (std::size_t q = 0; q < dev->queues().size(); ++q) {
            std::uint64_t v = 0;
            if (::read(dev->notify_fd(q), &v, sizeof v) != static_cast<ssize_t>(sizeof v)) continue;
            ++n;
            notify(q);
        }
        return n;
    }
    std::size_t input(const Bytes& b) {
        std::lock_guard lk(dev->mutex());
        return dev->enqueue_input(b);
    }
    std::size_t input(const std::string& s) { return input(text(s)); }

    ConsoleSize config_size() const {
        std::uint8_t b[4] = {};
        dev->read_config(0, b);
        ConsoleSize s;
        std::memcpy(&s.cols, b, 2);
        std::memcpy(&s.rows, b + 2, 2);
        return s;
    }
    std::uint32_t generation() const { return dev->state().config_generation; }
    bool config_irq() const { return (dev->interrupt_status() & INT_CONFIG) != 0; }
    bool used_irq() const { return (dev->interrupt_status() & INT_USED_RING) != 0; }

    GuestMemory mem = ember::test::make_test_ram(); // first: the rings refer to it
    boost::asio::io_context io;
    std::shared_ptr<ConsoleOutput> out;
    std::unique_ptr<ConsoleDevice> dev;
    DriverRings rx{mem, 16, 0x1000, 0x2000, 0x3000};
    DriverRings tx{mem, 16, 0x4000, 0x5000, 0x6000};

private:
    std::uint64_t next_buf_ = ember::test::kDataAddr;
    unsigned next_desc_[2] = {0, 0};
};

using UsedElem = std::pair<std::uint32_t, std::uint32_t>;

// A rig writing to a new regular file in `dir`, opened as serial_out_path is.
ConsoleRig file_rig(TempDir& dir, std::string& path, std::optional<ConsoleSize> size = std::nullopt) {
    path = dir.file("out");
    return ConsoleRig(ConsoleOutput::open_path(path), size);
}

} // namespace

// ==========================================================================================
// read_config (§5.3.4: struct virtio_console_config, little-endian)

TEST_CASE("console config: cols at 0, rows at 2, max_nr_ports = 1 at 4, emerg_wr reads 0", "[console]") {
    const ConsoleSize sz{0x1234, 0xa5b6};
    std::uint8_t b[CONFIG_SIZE];
    std::memset(b, 0xcc, sizeof b);
    read_config(sz, 0, b);
    const std::uint8_t expect[CONFIG_SIZE] = {0x34, 0x12, 0xb6, 0xa5, 1, 0, 0, 0, 0, 0, 0, 0};
    CHECK(std::equal(b, b + CONFIG_SIZE, expect));

    std::uint16_t cols = 0, rows = 0;
    std::uint32_t ports = 0;
    read_config(sz, 0, std::span(reinterpret_cast<std::uint8_t*>(&cols), 2));
    read_config(sz, 2, std::span(reinterpret_cast<std::uint8_t*>(&rows), 2));
    read_config(sz, 4, std::span(reinterpret_cast<std::uint8_t*>(&ports), 4));
    CHECK(cols == 0x1234);
    CHECK(rows == 0xa5b6);
    CHECK(ports == 1);
}

TEST_CASE("console config: every offset and width, in range, straddling the end and past it", "[console]") {
    const ConsoleSize sz{80, 24};
    std::uint8_t layout[CONFIG_SIZE] = {80, 0, 24, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    for (std::uint64_t off = 0; off < 24; ++off) {
        for (std::size_t width = 0; width <= 16; ++width) {
            INFO("offset " << off << " width " << width);
            std::vector<std::uint8_t> buf(width + 8, 0xcc); // 4 guard bytes either side
            read_config(sz, off, std::span(buf).subspan(4, width));
            bool ok = true;
            for (std::size_t i = 0; i < width; ++i) ok = ok && buf[4 + i] == (off + i < CONFIG_SIZE ? layout[off + i] : 0);
            for (std::size_t g = 0; g < 4; ++g) ok = ok && buf[g] == 0xcc && buf[4 + width + g] == 0xcc;
            CHECK(ok);
        }
    }
}

TEST_CASE("console config: offsets near UINT64_MAX read 0 and do not wrap", "[console]") {
    const ConsoleSize sz{0xffff, 0xffff};
    for (std::uint64_t off : {UINT64_MAX, UINT64_MAX - 1, UINT64_MAX - 3, UINT64_MAX - 7, UINT64_MAX - 11, UINT64_MAX - 15,
                              std::uint64_t{1} << 63, std::uint64_t{1} << 32, std::uint64_t{CONFIG_SIZE}}) {
        INFO("offset " << off);
        std::vector<std::uint8_t> buf(16, 0xcc);
        read_config(sz, off, buf);
        CHECK(buf == std::vector<std::uint8_t>(16, 0));
    }
}

// ==========================================================================================
// gather_output (§5.3.6.1: transmitq buffers are driver-to-device only)

TEST_CASE("console gather_output: readable buffers in order, zero-length ones skipped", "[console]") {
    Chain c;
    c.readable("").readable("hello ").readable("").readable("world").readable("");
    std::vector<iovec> iov{iovec{nullptr, 3}};
    std::size_t total = 99;
    REQUIRE(gather_output(c.span(), iov, total) == TxError::None);
    CHECK(total == 11);
    REQUIRE(iov.size() == 2);
    CHECK(iov[0].iov_base == c[1].host);
    CHECK(iov[1].iov_base == c[3].host);
    CHECK(gathered(iov) == "hello world");
}

TEST_CASE("console gather_output: an empty chain is no output", "[console]") {
    Chain c;
    std::vector<iovec> iov{iovec{nullptr, 3}};
    std::size_t total = 99;
    CHECK(gather_output(c.span(), iov, total) == TxError::None);
    CHECK(iov.empty());
    CHECK(total == 0);
    Chain z;
    z.readable("").readable("");
    CHECK(gather_output(z.span(), iov, total) == TxError::None);
    CHECK(iov.empty());
    CHECK(total == 0);
}

TEST_CASE("console gather_output: a device-writable buffer anywhere refuses the whole chain", "[console]") {
    std::vector<iovec> iov;
    std::size_t total = 0;
    SECTION("first") {
        Chain c;
        c.writable(4).readable("abc");
        CHECK(gather_output(c.span(), iov, total) == TxError::DeviceWritable);
    }
    SECTION("after output") {
        Chain c;
        c.readable("abc").readable("def").writable(4);
        CHECK(gather_output(c.span(), iov, total) == TxError::DeviceWritable);
    }
    SECTION("zero-length") {
        Chain c;
        c.readable("abc").writable(0);
        CHECK(gather_output(c.span(), iov, total) == TxError::DeviceWritable);
    }
    // Nothing of a refused chain may be written.
    CHECK(iov.empty());
    CHECK(total == 0);
    CHECK(std::string(to_string(TxError::DeviceWritable)) != to_string(TxError::None));
}

// ==========================================================================================
// ConsoleOutput: the host end never blocks a guest write

TEST_CASE("console output: a regular file gets every byte, in order, written directly", "[console]") {
    TempDir dir;
    const std::string path = dir.file("out");
    boost::asio::io_context io;
    Bytes all;
    {
        ConsoleOutput out(io, ConsoleOutput::open_path(path), 16);
        for (std::size_t i = 0; i < 50; ++i) {
            const Bytes chunk = pattern(1 + i * 97, static_cast<std::uint8_t>(i));
            CHECK(out.write(chunk) == chunk.size());
            all.insert(all.end(), chunk.begin(), chunk.end());
        }
        CHECK(out.write({}) == 0);
        // The capacity bounds the buffer, not direct writes; nothing waits for the event loop.
        CHECK(out.buffered() == 0);
        CHECK(out.metrics().bytes_written == all.size());
        CHECK(out.metrics().bytes_dropped == 0);
        CHECK(out.metrics().write_fails == 0);
        CHECK(mismatch(read_file(path), all) == "");
    }
    CHECK(io.poll() == 0);
    CHECK(mismatch(read_file(path), all) == "");
}

TEST_CASE("console output: open_path appends, creates with mode 0600 and names the path in errors", "[console]") {
    TempDir dir;
    boost::asio::io_context io;
    SECTION("a new file") {
        const std::string path = dir.file("new");
        {
            ConsoleOutput out(io, ConsoleOutput::open_path(path));
            CHECK(out.write(text("abc")) == 3);
        }
        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK(S_ISREG(st.st_mode));
        CHECK((st.st_mode & 0777) == 0600);
        CHECK(read_file(path) == text("abc"));
    }
    SECTION("an existing file keeps its contents") {
        const std::string path = dir.file("old");
        {
            ConsoleOutput a(io, ConsoleOutput::open_path(path));
            CHECK(a.write(text("old\n")) == 4);
        }
        ConsoleOutput b(io, ConsoleOutput::open_path(path));
        CHECK(b.write(text("new\n")) == 4);
        CHECK(read_file(path) == text("old\nnew\n"));
    }
    SECTION("errors") {
        CHECK_CONFIG_ERROR(ConsoleOutput::open_path(""), "must not be empty");
        CHECK_CONFIG_ERROR(ConsoleOutput::open_path(dir.path()), dir.path());
    }
    SECTION("a named pipe without a reader: output waits for one, then drops and counts, never blocks") {
        const std::string fifo = dir.file("fifo");
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        ConsoleOutput out(io, ConsoleOutput::open_path(fifo), 4096);
        CHECK(out.write(text("early")) == 5);
        CHECK(out.buffered() == 0); // taken by the pipe itself, for the first reader
        {
            const int rfd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
            REQUIRE(rfd >= 0);
            UniqueFd reader(rfd);
            char b[8] = {};
            CHECK(::read(reader.get(), b, sizeof b) == 5);
            CHECK(std::string(b) == "early");
            REQUIRE(::fcntl(reader.get(), F_SETPIPE_SZ, 4096) == 4096);
        } // the reader leaves: no EPIPE, the pipe then the bounded buffer take output, the rest drops
        const Bytes big = pattern(3 * 4096, 7);
        CHECK(out.write(big) == 2 * 4096);
        CHECK(out.buffered() == 4096);
        CHECK(out.metrics().bytes_dropped == 4096);
        CHECK(out.metrics().write_fails == 0);
    }
    SECTION("a named pipe with a reader is written without blocking") {
        const std::string fifo = dir.file("fifo");
        REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
        const int rfd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
        REQUIRE(rfd >= 0);
        UniqueFd reader(rfd);
        UniqueFd w = ConsoleOutput::open_path(fifo);
        const int raw = w.get();
        CHECK((fd_flags(raw) & O_NONBLOCK) == 0); // blocking until ConsoleOutput decides
        ConsoleOutput out(io, std::move(w), 4096);
        CHECK((fd_flags(raw) & O_NONBLOCK) != 0);
        CHECK(out.write(text("fifo")) == 4);
        char b[8] = {};
        CHECK(::read(reader.get(), b, sizeof b) == 4);
        CHECK(std::string(b) == "fifo");
    }
}

TEST_CASE("console output: a pipe nobody reads fills the buffer to its capacity and drops the rest", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    const std::size_t pipe_cap = p.capacity();
    constexpr std::size_t kCap = 4096;
    const Bytes data = pattern(200 * 1024);
    const auto owned = pipe_output(io, p, kCap);
    ConsoleOutput& out = *owned;

    std::size_t accepted = 0;
    const auto t0 = std::chrono::steady_clock::now();
    SECTION("one large write") {
        accepted = out.write(data);
        // The pipe took what it could hold, the buffer the next kCap bytes.
        CHECK(out.metrics().bytes_written == pipe_cap);
    }
    SECTION("many small writes") {
        for (std::size_t off = 0; off < data.size(); off += 1000) {
            const std::size_t n = std::min<std::size_t>(1000, data.size() - off);
            accepted += out.write(std::span(data).subspan(off, n));
        }
        CHECK(out.metrics().bytes_written > 0);
        CHECK(out.metrics().bytes_written <= pipe_cap);
    }
    // Never waits for the reader (a blocking write would hang here for good).
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
    CHECK(out.buffered() == kCap);
    CHECK(accepted == out.metrics().bytes_written + kCap);
    CHECK(out.metrics().bytes_dropped == data.size() - accepted);
    CHECK(out.metrics().write_fails == 0);
    CHECK(offered_total(out) == data.size());

    // A full buffer takes nothing more, even a single byte.
    CHECK(out.write(text("x")) == 0);
    CHECK(out.metrics().bytes_dropped == data.size() - accepted + 1);
    CHECK(out.buffered() == kCap);

    // The reader catches up: the event loop flushes the buffer, and the reader gets exactly the
    // accepted bytes, which are the start of the data, in order.
    const Bytes got = collect(io, p, accepted);
    CHECK(got.size() == accepted);
    CHECK(mismatch(got, prefix(data, accepted)) == "");
    CHECK(out.buffered() == 0);
    CHECK(out.metrics().bytes_written == accepted);

    // With the buffer empty, writes go straight through again.
    CHECK(out.write(text("tail")) == 4);
    CHECK(out.buffered() == 0);
    Bytes rest;
    p.take(rest);
    CHECK(rest == text("tail"));
}

TEST_CASE("console output: bytes written after a backlog wait behind it, even when the pipe has room", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    const std::size_t pipe_cap = p.resize(4096);
    const Bytes a = pattern(pipe_cap + 1500, 7), b = pattern(300, 99);
    const auto owned = pipe_output(io, p, 8192);
    ConsoleOutput& out = *owned;
    REQUIRE(out.write(a) == a.size());
    REQUIRE(out.buffered() == 1500);
    // The reader empties the pipe, but the event loop has not run: the backlog is still queued,
    // so `b` must queue behind it rather than overtake it.
    Bytes got;
    CHECK(p.take(got) == pipe_cap);
    CHECK(out.write(b) == b.size());
    CHECK(out.buffered() == 1500 + b.size());
    got = collect(io, p, a.size() + b.size() - pipe_cap);
    Bytes expect(a.begin() + static_cast<std::ptrdiff_t>(pipe_cap), a.end());
    expect.insert(expect.end(), b.begin(), b.end());
    CHECK(mismatch(got, expect) == "");
    CHECK(out.metrics().bytes_dropped == 0);
    CHECK(out.metrics().bytes_written == a.size() + b.size());
}

TEST_CASE("console output: a buffer drained piecemeal keeps order across many refills", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    (void)p.resize(4096);
    const Bytes data = pattern(256 * 1024, 3);
    const auto owned = pipe_output(io, p, 64 * 1024);
    ConsoleOutput& out = *owned;
    Bytes got;
    std::size_t off = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    // The writer never outruns the buffer: it writes only what fits, while the reader takes
    // a little at a time and the event loop flushes.
    while ((off < data.size() || got.size() < data.size()) && std::chrono::steady_clock::now() < deadline) {
        const std::size_t room = 64 * 1024 - out.buffered();
        const std::size_t n = std::min({room, data.size() - off, std::size_t{3000}});
        if (n > 0) {
            REQUIRE(out.write(std::span(data).subspan(off, n)) == n);
            off += n;
        }
        p.take(got, 1000);
        pump(io);
    }
    CHECK(out.metrics().bytes_dropped == 0);
    CHECK(mismatch(got, data) == "");
}

TEST_CASE("console output: drain flushes the buffer without the event loop, within its budget", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    const std::size_t pipe_cap = p.resize(4096);
    const Bytes data = pattern(pipe_cap + 2000, 5);
    const auto owned = pipe_output(io, p, 4096);
    ConsoleOutput& out = *owned;
    REQUIRE(out.write(data) == data.size());
    REQUIRE(out.buffered() == 2000);

    SECTION("a reader that does not read: drain gives up after the budget") {
        const auto t0 = std::chrono::steady_clock::now();
        out.drain(std::chrono::milliseconds(100));
        const auto took = std::chrono::steady_clock::now() - t0;
        CHECK(took >= std::chrono::milliseconds(90));
        CHECK(took < std::chrono::seconds(3));
        CHECK(out.buffered() == 2000);
        CHECK(out.metrics().bytes_dropped == 0);
    }
    SECTION("a reader that emptied the pipe: drain hands over everything") {
        Bytes got;
        CHECK(p.take(got) == pipe_cap);
        out.drain(std::chrono::milliseconds(2000));
        CHECK(out.buffered() == 0);
        p.take(got);
        CHECK(mismatch(got, data) == "");
        CHECK(out.metrics().bytes_written == data.size());
    }
    SECTION("nothing buffered: drain returns at once") {
        Bytes got;
        p.take(got);
        out.drain(std::chrono::milliseconds(2000));
        const auto t0 = std::chrono::steady_clock::now();
        out.drain(std::chrono::seconds(10));
        CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    }
}

TEST_CASE("console output: a closed reader counts a write failure and drops the output", "[console]") {
    IgnoreSigpipe sigpipe;
    boost::asio::io_context io;
    SECTION("nothing buffered") {
        Pipe p;
        p.rd.reset();
        const auto owned = pipe_output(io, p, 4096);
        ConsoleOutput& out = *owned;
        CHECK(out.write(pattern(100)) == 0);
        CHECK(out.metrics().write_fails == 1);
        CHECK(out.metrics().bytes_dropped == 100);
        CHECK(out.metrics().bytes_written == 0);
        CHECK(out.buffered() == 0);
        CHECK(out.write(pattern(50)) == 0);
        CHECK(out.metrics().write_fails == 2);
        CHECK(offered_total(out) == 150);
    }
    SECTION("with a backlog: the event loop's flush fails and drops it") {
        Pipe p;
        const std::size_t pipe_cap = p.resize(4096);
        const auto owned = pipe_output(io, p, 4096);
        ConsoleOutput& out = *owned;
        const Bytes data = pattern(pipe_cap + 10000);
        CHECK(out.write(data) == pipe_cap + 4096);
        pump(io); // the flush waits for the descriptor to become writable
        CHECK(out.buffered() == 4096);
        p.rd.reset();
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (out.buffered() != 0 && std::chrono::steady_clock::now() < deadline) pump(io, std::chrono::milliseconds(5));
        CHECK(out.buffered() == 0);
        CHECK(out.metrics().write_fails == 1);
        CHECK(out.metrics().bytes_written == pipe_cap);
        CHECK(out.metrics().bytes_dropped == data.size() - pipe_cap);
        CHECK(offered_total(out) == data.size());
    }
}

TEST_CASE("console output: the descriptor's blocking mode is restored on destruction", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    const int keep = ::fcntl(p.wr.get(), F_DUPFD_CLOEXEC, 3); // shares the open file description
    REQUIRE(keep >= 0);
    UniqueFd kept(keep);
    REQUIRE((fd_flags(keep) & O_NONBLOCK) == 0);
    {
        ConsoleOutput out(io, std::move(p.wr));
        CHECK((fd_flags(keep) & O_NONBLOCK) != 0);
    }
    CHECK((fd_flags(keep) & O_NONBLOCK) == 0);

    TempDir dir;
    const std::string path = dir.file("f");
    UniqueFd f = ConsoleOutput::open_path(path);
    const int fkeep = ::fcntl(f.get(), F_DUPFD_CLOEXEC, 3);
    REQUIRE(fkeep >= 0);
    UniqueFd fkept(fkeep);
    {
        ConsoleOutput out(io, std::move(f));
        CHECK((fd_flags(fkeep) & O_NONBLOCK) == 0); // a regular file stays blocking
    }
}

TEST_CASE("console output: destroyed with a flush pending, the event loop does nothing with it", "[console]") {
    boost::asio::io_context io;
    Pipe p;
    const std::size_t pipe_cap = p.resize(4096);
    SECTION("before the flush was armed") {
        {
            const auto owned = pipe_output(io, p, 4096);
            ConsoleOutput& out = *owned;
            CHECK(out.write(pattern(pipe_cap + 100)) == pipe_cap + 100);
        }
        Bytes got;
        p.take(got);
        pump(io);
        CHECK(got.size() == pipe_cap);
    }
    SECTION("while the flush waits for the descriptor") {
        {
            const auto owned = pipe_output(io, p, 4096);
            ConsoleOutput& out = *owned;
            CHECK(out.write(pattern(pipe_cap + 100)) == pipe_cap + 100);
            pump(io);
        }
        Bytes got;
        p.take(got);
        pump(io, std::chrono::milliseconds(20));
        p.take(got);
        CHECK(got.size() == pipe_cap); // the backlog died with its owner
    }
}

// ==========================================================================================
// ConsoleDevice: identification, features, configuration

TEST_CASE("console device: identification, and F_SIZE offered only with a size", "[console]") {
    TempDir dir;
    std::string path;
    SECTION("with a size") {
        ConsoleRig r = file_rig(dir, path, ConsoleSize{132, 43});
        CHECK(r.dev->device_type() == device_id::CONSOLE);
        CHECK(r.dev->device_features() == kSizeFeature);
        CHECK((r.dev->offered_features() & kSizeFeature) != 0);
        CHECK((r.dev->offered_features() & bit(F_MULTIPORT)) == 0);
        CHECK((r.dev->offered_features() & bit(F_EMERG_WRITE)) == 0);
        CHECK((r.dev->offered_features() & bit(feature::VERSION_1)) != 0);
        CHECK(r.config_size() == ConsoleSize{132, 43});
        CHECK(r.dev->queues().size() == 2);
        CHECK(r.dev->queues()[ConsoleDevice::RX].max_size() == ConsoleDevice::QUEUE_SIZE);
        CHECK(r.dev->queues()[ConsoleDevice::TX].max_size() == ConsoleDevice::QUEUE_SIZE);
    }
    SECTION("without") {
        ConsoleRig r = file_rig(dir, path);
        CHECK(r.dev->device_features() == 0);
        CHECK((r.dev->offered_features() & kSizeFeature) == 0);
        CHECK(r.config_size() == ConsoleSize{0, 0});
        std::uint8_t b[CONFIG_SIZE];
        r.dev->read_config(0, b);
        CHECK(b[4] == 1);
        // A driver may not accept F_SIZE when it was not offered (§2.2.1).
        REQUIRE(r.dev->write_status(status::ACKNOWLEDGE | status::DRIVER));
        REQUIRE(r.dev->write_driver_features(0, static_cast<std::uint32_t>(kSizeFeature)));
        REQUIRE(r.dev->write_driver_features(1, 1)); // VERSION_1
        REQUIRE(r.dev->write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        CHECK((r.dev->state().status & status::FEATURES_OK) == 0);
    }
}

// ==========================================================================================
// ConsoleDevice: transmitq0 (§5.3.6: output is sent by adding buffers to the transmitq)

TEST_CASE("console device: guest output reaches the file in order; every chain is returned with len 0", "[console]") {
    const bool event_idx = GENERATE(false, true);
    INFO("EVENT_IDX " << event_idx);
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up(event_idx ? 0 : kEventIdx);
    const Posted a = r.post_tx({out_seg("hello ")});
    const Posted b = r.post_tx({out_seg("wor"), out_seg(""), out_seg("ld")});
    const Posted c = r.post_tx({out_seg("!\n")});
    r.notify(ConsoleDevice::TX);
    CHECK(read_file(path) == text("hello world!\n"));
    REQUIRE(r.tx.used_idx() == 3);
    CHECK(r.tx.nth_used(0) == UsedElem{a.head, 0});
    CHECK(r.tx.nth_used(1) == UsedElem{b.head, 0});
    CHECK(r.tx.nth_used(2) == UsedElem{c.head, 0});
    CHECK(r.used_irq());
    CHECK(r.dev->metrics().tx_count == 3);
    CHECK(r.dev->metrics().tx_bytes_count == 13);
    CHECK(r.dev->metrics().tx_queue_event_count == 1);
    CHECK(r.dev->metrics().tx_malformed_chains == 0);
    if (event_idx) CHECK(r.tx.avail_event() == 3); // the next chain will be notified (§2.7.10)

    // More output on a later notification goes after it. With EVENT_IDX the driver asks for the
    // interrupt through used_event (§2.7.7.2).
    r.dev->ack_interrupt(INT_USED_RING);
    if (event_idx) r.tx.set_used_event(3);
    const Posted d = r.post_tx({out_seg("more")});
    r.notify(ConsoleDevice::TX);
    CHECK(read_file(path) == text("hello world!\nmore"));
    CHECK(r.tx.used_idx() == 4);
    CHECK(r.tx.nth_used(3) == UsedElem{d.head, 0});
    CHECK(r.used_irq());
    // A notification with nothing new returns nothing and raises nothing.
    r.dev->ack_interrupt(INT_USED_RING);
    r.notify(ConsoleDevice::TX);
    CHECK(r.tx.used_idx() == 4);
    CHECK_FALSE(r.used_irq());
}

TEST_CASE("console device: output is consumed at once even when the host output is full", "[console]") {
    Pipe p;
    const std::size_t pipe_cap = p.resize(4096);
    constexpr std::size_t kCap = 4096;
    const int raw = p.wr.get();
    ConsoleRig r(std::move(p.wr), std::nullopt, kCap);
    REQUIRE((fd_flags(raw) & O_NONBLOCK) != 0);
    r.bring_up();
    std::string all;
    std::vector<Posted> posted;
    for (int i = 0; i < 12; ++i) {
        const Bytes chunk = pattern(2048, static_cast<std::uint8_t>(i));
        posted.push_back(r.post_tx({out_seg(std::string(chunk.begin(), chunk.end()))}));
        all.append(chunk.begin(), chunk.end());
    }
    r.notify(ConsoleDevice::TX);
    // Every chain is back (hvc spins until it is), whatever the host did with the bytes.
    REQUIRE(r.tx.used_idx() == 12);
    for (std::uint16_t i = 0; i < 12; ++i) CHECK(r.tx.nth_used(i) == UsedElem{posted[i].head, 0});
    CHECK(r.dev->metrics().tx_count == 12);
    CHECK(r.dev->metrics().tx_bytes_count == all.size());
    CHECK(r.out->buffered() == kCap);
    CHECK(r.out->metrics().bytes_written == pipe_cap);
    CHECK(r.out->metrics().bytes_dropped == all.size() - pipe_cap - kCap);

    const Bytes got = collect(r.io, p, pipe_cap + kCap);
    CHECK(mismatch(got, prefix(text(all), pipe_cap + kCap)) == "");
}

TEST_CASE("console device: a transmit chain with a device-writable buffer is returned and counted", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    const Posted bad = r.post_tx({out_seg("bad"), in_seg(8)});
    const Posted good = r.post_tx({out_seg("good")});
    r.notify(ConsoleDevice::TX);
    CHECK(read_file(path) == text("good"));
    REQUIRE(r.tx.used_idx() == 2);
    CHECK(r.tx.nth_used(0) == UsedElem{bad.head, 0});
    CHECK(r.tx.nth_used(1) == UsedElem{good.head, 0});
    CHECK(r.dev->metrics().tx_malformed_chains == 1);
    CHECK(r.dev->metrics().tx_count == 1);
    CHECK(r.dev->metrics().tx_bytes_count == 4);
    CHECK(r.guest(bad.addrs[1], 8) == "........"); // never written
    CHECK(r.dev->running());
}

TEST_CASE("console device: a malformed transmit chain is returned; a broken ring needs a reset", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    // Descriptor 15 points past the 16-entry table (§2.7.5).
    const std::uint64_t buf = r.alloc(8);
    r.tx.set_desc(15, buf, 8, desc_flag::NEXT, 16);
    r.tx.publish(15);
    const Posted good = r.post_tx({out_seg("ok")});
    r.notify(ConsoleDevice::TX);
    REQUIRE(r.tx.used_idx() == 2);
    CHECK(r.tx.nth_used(0) == UsedElem{15, 0});
    CHECK(r.tx.nth_used(1) == UsedElem{good.head, 0});
    CHECK(r.dev->metrics().tx_malformed_chains == 1);
    CHECK(read_file(path) == text("ok"));
    CHECK(r.dev->running());

    // A head index beyond the queue breaks the ring protocol (§2.1.2).
    const std::uint32_t gen = r.generation();
    r.tx.publish(16);
    r.notify(ConsoleDevice::TX);
    CHECK((r.dev->state().status & status::DEVICE_NEEDS_RESET) != 0);
    CHECK_FALSE(r.dev->running());
    CHECK(r.config_irq());
    CHECK(r.generation() == gen + 1);
    CHECK(r.dev->metrics().event_fails == 1);
    CHECK(r.dev->needs_reset_count() == 1);
    CHECK(r.tx.used_idx() == 2);
    // A failed device takes no input either.
    r.post_rx({in_seg(8)});
    CHECK(r.input("x") == 0);
}

// ==========================================================================================
// ConsoleDevice: receiveq0 (§5.3.6.1: the driver posts device-writable buffers for input)

TEST_CASE("console device: input fills a receive buffer and raises a used-buffer interrupt", "[console]") {
    const bool event_idx = GENERATE(false, true);
    INFO("EVENT_IDX " << event_idx);
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up(event_idx ? 0 : kEventIdx);
    const Posted b = r.post_rx({in_seg(16)});
    CHECK(r.input("ls -l\n") == 6);
    REQUIRE(r.rx.used_idx() == 1);
    CHECK(r.rx.nth_used(0) == UsedElem{b.head, 6});
    CHECK(r.guest(b.addrs[0], 16) == "ls -l\n..........");
    CHECK(r.used_irq());
    CHECK(r.dev->metrics().rx_count == 1);
    CHECK(r.dev->metrics().rx_bytes_count == 6);
    CHECK(r.dev->metrics().rx_fails == 0);
    // Empty input takes no buffer.
    CHECK(r.input(Bytes{}) == 0);
    CHECK(r.rx.used_idx() == 1);
}

TEST_CASE("console device: input is spread over several small receive buffers", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    const Posted a = r.post_rx({in_seg(3)});
    const Posted b = r.post_rx({in_seg(1), in_seg(2)});
    const Posted c = r.post_rx({in_seg(3)});
    const Posted d = r.post_rx({in_seg(3)});
    CHECK(r.input("abcdefghij") == 10);
    REQUIRE(r.rx.used_idx() == 4);
    CHECK(r.rx.nth_used(0) == UsedElem{a.head, 3});
    CHECK(r.rx.nth_used(1) == UsedElem{b.head, 3});
    CHECK(r.rx.nth_used(2) == UsedElem{c.head, 3});
    CHECK(r.rx.nth_used(3) == UsedElem{d.head, 1});
    CHECK(r.guest(a.addrs[0], 3) == "abc");
    CHECK(r.guest(b.addrs[0], 1) == "d");
    CHECK(r.guest(b.addrs[1], 2) == "ef");
    CHECK(r.guest(c.addrs[0], 3) == "ghi");
    CHECK(r.guest(d.addrs[0], 3) == "j..");
    CHECK(r.dev->metrics().rx_count == 4);
    CHECK(r.dev->metrics().rx_bytes_count == 10);

    // More input than buffers: what fits is taken, the caller keeps the rest.
    const Posted e = r.post_rx({in_seg(4)});
    CHECK(r.input("0123456789") == 4);
    CHECK(r.rx.used_idx() == 5);
    CHECK(r.rx.nth_used(4) == UsedElem{e.head, 4});
    CHECK(r.guest(e.addrs[0], 4) == "0123");
}

TEST_CASE("console device: a receive buffer through an indirect table", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    const std::uint64_t table = r.alloc(32), b0 = r.alloc(2), b1 = r.alloc(8);
    r.rx.set_desc_at(table, 0, b0, 2, desc_flag::WRITE | desc_flag::NEXT, 1);
    r.rx.set_desc_at(table, 1, b1, 8, desc_flag::WRITE);
    r.rx.set_desc(7, table, 32, desc_flag::INDIRECT);
    r.rx.publish(7);
    CHECK(r.input("indirect") == 8);
    CHECK(r.rx.nth_used(0) == UsedElem{7, 8});
    CHECK(r.guest(b0, 2) == "in");
    CHECK(r.guest(b1, 6) == "direct");
}

TEST_CASE("console device: unusable receive buffers are returned empty and the next one gets the data", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    const Posted zero = r.post_rx({in_seg(0)});
    const Posted ro = r.post_rx({out_seg("RRRRRRRR")});
    const Posted mixed = r.post_rx({in_seg(4), out_seg("RRRR")});
    const Posted good = r.post_rx({in_seg(8)});
    CHECK(r.input("hello") == 5);
    REQUIRE(r.rx.used_idx() == 4);
    CHECK(r.rx.nth_used(0) == UsedElem{zero.head, 0});
    CHECK(r.rx.nth_used(1) == UsedElem{ro.head, 0});
    CHECK(r.rx.nth_used(2) == UsedElem{mixed.head, 0});
    CHECK(r.rx.nth_used(3) == UsedElem{good.head, 5});
    CHECK(r.guest(good.addrs[0], 8) == "hello...");
    CHECK(r.guest(ro.addrs[0], 8) == "RRRRRRRR");
    CHECK(r.guest(mixed.addrs[0], 4) == "....");
    CHECK(r.dev->metrics().rx_fails == 3);
    CHECK(r.dev->metrics().rx_count == 1);
    CHECK(r.dev->metrics().rx_bytes_count == 5);
    CHECK(r.dev->running());

    // Only unusable buffers: they are all returned, nothing is taken.
    const Posted z2 = r.post_rx({in_seg(0)});
    CHECK(r.input("x") == 0);
    CHECK(r.rx.used_idx() == 5);
    CHECK(r.rx.nth_used(4) == UsedElem{z2.head, 0});
    CHECK(r.dev->metrics().rx_fails == 4);
}

TEST_CASE("console device: a malformed receive chain is returned; a broken receive ring needs a reset", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    r.bring_up();
    const std::uint64_t buf = r.alloc(8);
    r.rx.set_desc(15, buf, 8, desc_flag::WRITE | desc_flag::NEXT, 16);
    r.rx.publish(15);
    const Posted good = r.post_rx({in_seg(8)});
    CHECK(r.input("ab") == 2);
    CHECK(r.rx.nth_used(0) == UsedElem{15, 0});
    CHECK(r.rx.nth_used(1) == UsedElem{good.head, 2});
    CHECK(r.dev->metrics().rx_fails == 1);

    r.rx.publish(200);
    CHECK(r.input("cd") == 0);
    CHECK((r.dev->state().status & status::DEVICE_NEEDS_RESET) != 0);
    CHECK(r.dev->metrics().event_fails == 1);
    CHECK(r.config_irq());
}

TEST_CASE("console device: input without receive buffers waits for the driver's notification", "[console]") {
    const bool event_idx = GENERATE(false, true);
    INFO("EVENT_IDX " << event_idx);
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    int calls = 0;
    r.dev->set_rx_space_callback([&calls] { ++calls; });

    SECTION("no buffer posted yet") {
        r.bring_up(event_idx ? 0 : kEventIdx);
        CHECK(r.input("early") == 0);
        CHECK(r.rx.used_idx() == 0);
        CHECK(calls == 0);
        // With EVENT_IDX the device asked to be notified of the next buffer (§2.7.10).
        if (event_idx) CHECK(r.rx.avail_event() == 0);
    }
    SECTION("the buffers ran out mid-input") {
        r.bring_up(event_idx ? 0 : kEventIdx);
        r.post_rx({in_seg(2)});
        CHECK(r.input("early") == 2);
        CHECK(calls == 0);
        if (event_idx) CHECK(r.rx.avail_event() == 1);
    }
    // Output notifications do not count.
    r.notify(ConsoleDevice::TX);
    CHECK(calls == 0);
    const Posted b = r.post_rx({in_seg(8)});
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 1);
    // Once told, the reader is not told again until input finds no buffer once more.
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 1);
    CHECK(r.input("early") == 5);
    CHECK(r.guest(b.addrs[0], 5) == "early");
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 1);
    // A used buffer is the driver's again: the next input waits for new ones.
    CHECK(r.input("late") == 0);
    CHECK(calls == 1);
    const Posted c = r.post_rx({in_seg(8)});
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 2);
    CHECK(r.input("late") == 4);
    CHECK(r.guest(c.addrs[0], 4) == "late");
}

// Input refused before DRIVER_OK must still produce the rx-space callback once buffers arrive:
// the VMM's stdin reader (Vm::feed_console) stops reading until it does.
TEST_CASE("console device: input refused before DRIVER_OK is resumed once the driver posts buffers", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    int calls = 0;
    r.dev->set_rx_space_callback([&calls] { ++calls; });
    CHECK(r.input("early") == 0);
    r.bring_up();
    CHECK(r.serve_notifications() == 2);
    r.post_rx({in_seg(8)});
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 1);
}

// ==========================================================================================
// ConsoleDevice: console size (§5.3.4, §5.3.6: with F_SIZE a configuration change notifies a new size)

TEST_CASE("console device: the size is announced with a configuration interrupt on the first notification", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path, ConsoleSize{80, 24});
    SECTION("F_SIZE negotiated") {
        r.bring_up();
        const std::uint32_t gen = r.generation();
        CHECK_FALSE(r.config_irq());
        // DRIVER_OK notified both queues for the device itself; serving that is the first one.
        CHECK(r.serve_notifications() == 2);
        CHECK(r.config_irq());
        CHECK(r.generation() == gen + 1);
        r.dev->ack_interrupt(INT_CONFIG);
        r.notify(ConsoleDevice::TX);
        r.notify(ConsoleDevice::RX);
        CHECK_FALSE(r.config_irq());
        CHECK(r.generation() == gen + 1);
    }
    SECTION("F_SIZE not negotiated") {
        r.bring_up(kSizeFeature);
        const std::uint32_t gen = r.generation();
        r.notify(ConsoleDevice::RX);
        r.notify(ConsoleDevice::TX);
        CHECK_FALSE(r.config_irq());
        CHECK(r.generation() == gen);
    }
}

TEST_CASE("console device: resize raises a configuration interrupt only for a new size with F_SIZE", "[console]") {
    TempDir dir;
    std::string path;
    SECTION("negotiated and running") {
        ConsoleRig r = file_rig(dir, path, ConsoleSize{80, 24});
        r.bring_up();
        r.notify(ConsoleDevice::TX); // announces 80x24
        r.dev->ack_interrupt(INT_CONFIG);
        const std::uint32_t gen = r.generation();
        r.dev->resize(ConsoleSize{80, 24});
        CHECK_FALSE(r.config_irq());
        CHECK(r.generation() == gen);
        r.dev->resize(ConsoleSize{132, 43});
        CHECK(r.config_irq());
        CHECK((r.dev->interrupt_status() & INT_USED_RING) == 0);
        CHECK(r.generation() == gen + 1);
        CHECK(r.config_size() == ConsoleSize{132, 43});
        r.dev->ack_interrupt(INT_CONFIG);
        r.dev->resize(ConsoleSize{132, 43});
        CHECK_FALSE(r.config_irq());
        r.dev->resize(ConsoleSize{132, 44});
        CHECK(r.config_irq());
        CHECK(r.generation() == gen + 2);
        CHECK(r.config_size() == ConsoleSize{132, 44});
    }
    SECTION("not negotiated") {
        ConsoleRig r = file_rig(dir, path, ConsoleSize{80, 24});
        r.bring_up(kSizeFeature);
        const std::uint32_t gen = r.generation();
        r.dev->resize(ConsoleSize{100, 30});
        CHECK_FALSE(r.config_irq());
        CHECK(r.generation() == gen);
    }
    SECTION("before DRIVER_OK: no interrupt, and the first notification announces the new size") {
        ConsoleRig r = file_rig(dir, path, ConsoleSize{80, 24});
        r.dev->resize(ConsoleSize{100, 30});
        CHECK_FALSE(r.config_irq());
        CHECK(r.config_size() == ConsoleSize{100, 30});
        r.bring_up();
        const std::uint32_t gen = r.generation();
        CHECK_FALSE(r.config_irq());
        r.notify(ConsoleDevice::RX);
        CHECK(r.config_irq());
        CHECK(r.generation() == gen + 1);
    }
    SECTION("a device without a size stays without one") {
        ConsoleRig r = file_rig(dir, path);
        r.bring_up();
        const std::uint32_t gen = r.generation();
        r.dev->resize(ConsoleSize{100, 30});
        CHECK_FALSE(r.config_irq());
        CHECK(r.generation() == gen);
        CHECK(r.config_size() == ConsoleSize{0, 0});
        CHECK(r.dev->device_features() == 0);
    }
}

TEST_CASE("console device: after a reset the size is announced again", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path, ConsoleSize{80, 24});
    r.bring_up();
    r.notify(ConsoleDevice::RX);
    const std::uint32_t gen = r.generation();
    REQUIRE(r.dev->write_status(0));
    CHECK(r.dev->state().status == 0);
    CHECK_FALSE(r.dev->running());
    CHECK(r.dev->interrupt_status() == 0);
    CHECK(r.generation() == gen); // VirtioDevice::reset keeps the generation counting
    r.rx = DriverRings(r.mem, 16, 0x7000, 0x8000, 0x9000);
    r.tx = DriverRings(r.mem, 16, 0xa000, 0xb000, 0xc000);
    r.bring_up();
    r.notify(ConsoleDevice::TX);
    CHECK(r.config_irq());
    CHECK(r.generation() == gen + 1);
    const Posted o = r.post_tx({out_seg("again")});
    r.notify(ConsoleDevice::TX);
    CHECK(r.tx.nth_used(0) == UsedElem{o.head, 0});
    CHECK(read_file(path) == text("again"));
}

// Likewise for input waiting when the driver resets the device (§2.4): the next driver's
// buffers resume it.
TEST_CASE("console device: input waiting across a reset is resumed by the next driver's buffers", "[console]") {
    TempDir dir;
    std::string path;
    ConsoleRig r = file_rig(dir, path);
    int calls = 0;
    r.dev->set_rx_space_callback([&calls] { ++calls; });
    r.bring_up();
    CHECK(r.input("waiting") == 0);
    REQUIRE(r.dev->write_status(0));
    r.rx = DriverRings(r.mem, 16, 0x7000, 0x8000, 0x9000);
    r.tx = DriverRings(r.mem, 16, 0xa000, 0xb000, 0xc000);
    r.bring_up();
    (void)r.serve_notifications();
    r.post_rx({in_seg(8)});
    r.notify(ConsoleDevice::RX);
    CHECK(calls == 1);
}
