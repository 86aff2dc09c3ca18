// Copy-on-write disks (devices/virtio/block/cow.hpp): the cluster map on its own, CowDisk
// against an in-memory model of the disk, export (--keep-disk), and the whole-file copies of
// vmm/base/file_clone.hpp.

#include "devices/virtio/block/cow.hpp"
#include "test_util.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/file_clone.hpp"
#include "vmm/drives.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <random>
#include <string>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio::block;
using Bytes = std::vector<std::uint8_t>;

namespace {

constexpr std::uint64_t C = CowMap::CLUSTER;

// A scratch directory holding a base image; removed with everything in it at scope exit.
struct Dir {
    Dir() {
        char name[] = "/tmp/ember-cow-test-XXXXXX";
        REQUIRE(::mkdtemp(name) != nullptr);
        path = name;
    }
    ~Dir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    Dir(const Dir&) = delete;
    Dir& operator=(const Dir&) = delete;
    std::string file(const std::string& name) const { return path + "/" + name; }
    std::size_t entries() const {
        return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(path), std::filesystem::directory_iterator()));
    }
    std::string path;
};

Bytes pattern(std::size_t n, std::uint32_t seed) {
    Bytes v(n);
    std::uint32_t x = seed * 2654435761U + 1;
    for (auto& b : v) {
        x = x * 1103515245U + 12345U;
        b = static_cast<std::uint8_t>(x >> 16);
    }
    return v;
}

void write_file(const std::string& path, const Bytes& bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));
    ::close(fd);
}

Bytes read_file(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    struct stat st {};
    REQUIRE(::fstat(fd, &st) == 0);
    Bytes out(static_cast<std::size_t>(st.st_size));
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
        REQUIRE(n > 0);
        done += static_cast<std::size_t>(n);
    }
    ::close(fd);
    return out;
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

// Splits `len` bytes of `buf` at `off` into up to three iovecs of uneven sizes.
std::vector<iovec> split(std::uint8_t* buf, std::size_t len, std::size_t salt) {
    std::vector<iovec> v;
    const std::size_t a = len == 0 ? 0 : (salt * 7) % (len + 1);
    const std::size_t b = len - a == 0 ? 0 : (salt * 13) % (len - a + 1);
    v.push_back({buf, a});
    v.push_back({buf + a, b});
    v.push_back({buf + a + b, len - a - b});
    return v;
}

// A CowDisk and the disk it should be, as bytes.
struct Model {
    Model(const Dir& dir, std::size_t bytes, std::uint32_t seed = 1)
        : base_path(dir.file("base.img")), base(pattern(bytes, seed)), disk(write_base(base_path, base)),
          cow(CowDisk::create(base_path, dir.path)) {}
    static Bytes write_base(const std::string& path, const Bytes& b) {
        write_file(path, b);
        return b;
    }
    Bytes read(std::uint64_t off, std::size_t len, std::size_t salt = 0) {
        Bytes out(len, 0xee);
        const auto iov = split(out.data(), len, salt);
        REQUIRE(cow.read(off, iov) == static_cast<std::int64_t>(len));
        return out;
    }
    void write(std::uint64_t off, const Bytes& data, std::size_t salt = 0) {
        Bytes copy = data;
        const auto iov = split(copy.data(), copy.size(), salt);
        REQUIRE(cow.write(off, iov) == static_cast<std::int64_t>(data.size()));
        std::copy(data.begin(), data.end(), disk.begin() + static_cast<std::ptrdiff_t>(off));
    }
    void discard(std::uint64_t off, std::uint64_t len) {
        REQUIRE(cow.discard(off, len) == 0);
        std::fill_n(disk.begin() + static_cast<std::ptrdiff_t>(off), len, 0);
    }
    void check_all() {
        CHECK(read(0, disk.size(), 5) == disk);
        CHECK(read_file(base_path) == base); // the base is never written
    }
    std::string base_path;
    Bytes base, disk;
    CowDisk cow;
};

} // namespace

// ------------------------------------------------------------------------------------------
// CowMap

TEST_CASE("cow map: cluster count and the partial last cluster", "[cow]") {
    CHECK(CowMap(0).clusters() == 0);
    CHECK(CowMap(1).clusters() == 1);
    CHECK(CowMap(C).clusters() == 1);
    CHECK(CowMap(C + 1).clusters() == 2);
    const CowMap m(3 * C + 100);
    CHECK(m.clusters() == 4);
    CHECK(m.cluster_begin(3) == 3 * C);
    CHECK(m.cluster_end(3) == 3 * C + 100);
    CHECK(m.cluster_end(2) == 3 * C);
    CHECK(m.contains(0, 3 * C + 100));
    CHECK(m.contains(3 * C + 100, 0));
    CHECK_FALSE(m.contains(3 * C + 100, 1));
    CHECK_FALSE(m.contains(3 * C + 101, 0));
    CHECK_FALSE(m.contains(1, UINT64_MAX)); // no overflow
    CHECK_FALSE(m.contains(UINT64_MAX, 2));
}

TEST_CASE("cow map: touched and wholly covered clusters", "[cow]") {
    const CowMap m(3 * C + 100);
    CHECK(m.touched(0, 1) == CowMap::ClusterRange{0, 1});
    CHECK(m.touched(C - 1, 2) == CowMap::ClusterRange{0, 2});
    CHECK(m.touched(C, C) == CowMap::ClusterRange{1, 2});
    CHECK(m.covered(C, C) == CowMap::ClusterRange{1, 2});
    CHECK(m.covered(1, 2 * C) == CowMap::ClusterRange{1, 2});
    CHECK(m.covered(1, 2 * C - 2).empty());
    CHECK(m.covered(1, 3 * C) == CowMap::ClusterRange{1, 3});
    CHECK(m.covered(100, 10).empty());
    // Reaching the end of the disk covers the partial last cluster.
    CHECK(m.covered(3 * C, 100) == CowMap::ClusterRange{3, 4});
    CHECK(m.covered(3 * C, 99).empty());
    CHECK(m.covered(2 * C + 1, C + 99) == CowMap::ClusterRange{3, 4});
}

TEST_CASE("cow map: copy-ups are the partly written absent clusters at the edges", "[cow]") {
    CowMap m(8 * C);
    auto cu = m.copy_ups(0, C);
    CHECK(cu.count == 0);
    cu = m.copy_ups(10, 20);
    REQUIRE(cu.count == 1);
    CHECK(cu.cluster[0] == 0);
    cu = m.copy_ups(C - 1, C + 2); // partial 0, whole 1, partial 2
    REQUIRE(cu.count == 2);
    CHECK(cu.cluster[0] == 0);
    CHECK(cu.cluster[1] == 2);
    m.set_present({2, 3});
    cu = m.copy_ups(C - 1, C + 2);
    REQUIRE(cu.count == 1);
    CHECK(cu.cluster[0] == 0);
    cu = m.copy_ups(C, 3 * C); // aligned on both ends
    CHECK(cu.count == 0);
    CHECK(m.copy_ups(5, 0).count == 0);
}

TEST_CASE("cow map: runs split a range by presence, word boundaries included", "[cow]") {
    CowMap m(200 * C + 7);
    m.set_present({63, 65});  // across the first word boundary
    m.set_present({128, 192}); // one whole word
    m.set_present({200, 201}); // the partial last cluster
    CHECK(m.present_count() == 2 + 64 + 1);
    m.set_present({63, 64}); // again: counted once
    CHECK(m.present_count() == 67);
    CHECK(m.present(64));
    CHECK_FALSE(m.present(65));
    CHECK_FALSE(m.present(1000)); // beyond the disk

    std::vector<CowMap::Run> runs;
    m.runs(0, m.disk_bytes(), runs);
    const std::vector<CowMap::Run> expect = {
            {0, 63 * C, false},         {63 * C, 2 * C, true},  {65 * C, 63 * C, false},
            {128 * C, 64 * C, true},    {192 * C, 8 * C, false}, {200 * C, 7, true},
    };
    CHECK(runs == expect);
    // Clipped to an unaligned range.
    m.runs(63 * C + 5, 2 * C, runs);
    CHECK(runs == std::vector<CowMap::Run>{{63 * C + 5, 2 * C - 5, true}, {65 * C, 5, false}});
    m.runs(10, 0, runs);
    CHECK(runs.empty());
    CHECK(m.any_present({60, 64}));
    CHECK_FALSE(m.any_present({65, 128}));
    CHECK_FALSE(m.any_present({5, 5}));
}

// ------------------------------------------------------------------------------------------
// CowDisk

TEST_CASE("cow disk: an untouched disk reads as its base, and the overlay has no name", "[cow]") {
    Dir dir;
    Model m(dir, 16 * C + 512);
    CHECK(m.cow.size() == 16 * C + 512);
    CHECK(m.cow.base_path() == m.base_path);
    CHECK(dir.entries() == 1); // the base alone: the overlay is O_TMPFILE or unlinked
    m.check_all();
    CHECK(m.read(C - 3, 7, 2) == Bytes(m.base.begin() + C - 3, m.base.begin() + C + 4));
    CHECK(m.cow.map().present_count() == 0);
}

TEST_CASE("cow disk: unaligned writes across clusters keep the rest of each cluster", "[cow]") {
    Dir dir;
    Model m(dir, 16 * C);
    m.write(C - 10, pattern(20, 2), 1);         // the end of cluster 0, the start of 1
    m.write(3 * C + 1, pattern(3 * C, 3), 2);   // partial 3, whole 4 and 5, partial 6
    m.write(10 * C, pattern(C, 4));             // exactly one cluster: no copy-up needed
    m.write(12 * C + 100, pattern(1, 5));
    m.check_all();
    for (std::uint64_t c : {0, 1, 3, 4, 5, 6, 10, 12}) CHECK(m.cow.map().present(c));
    for (std::uint64_t c : {2, 7, 8, 9, 11, 13, 14, 15}) CHECK_FALSE(m.cow.map().present(c));
    // Overwriting present clusters, partly.
    m.write(C - 5, pattern(10, 6), 3);
    m.write(4 * C + 7, pattern(2 * C, 7));
    m.check_all();
    for (std::size_t salt = 0; salt < 8; ++salt) {
        const std::uint64_t off = (salt * 3001) % (16 * C - 9000);
        CHECK(m.read(off, 9000, salt) == Bytes(m.disk.begin() + static_cast<std::ptrdiff_t>(off),
                                               m.disk.begin() + static_cast<std::ptrdiff_t>(off + 9000)));
    }
}

TEST_CASE("cow disk: flush succeeds and changes nothing", "[cow]") {
    Dir dir;
    Model m(dir, 4 * C);
    m.write(100, pattern(5000, 8));
    CHECK(m.cow.flush() == 0);
    m.check_all();
}

TEST_CASE("cow disk: discard zeroes whole clusters as holes and the edges through copy-up", "[cow]") {
    Dir dir;
    Model m(dir, 16 * C);
    m.write(2 * C, pattern(C, 9)); // cluster 2 is in the overlay with data
    m.discard(C + 100, 4 * C);     // partial 1, whole 2..4, partial 5
    for (std::uint64_t c : {1, 2, 3, 4, 5}) CHECK(m.cow.map().present(c));
    m.check_all();
    CHECK(m.read(2 * C, 3 * C) == Bytes(3 * C, 0));
    CHECK(m.read(C, 100) == Bytes(m.base.begin() + C, m.base.begin() + C + 100));
    // Inside one cluster: only zeroes written, no hole.
    m.discard(9 * C + 1, 10);
    CHECK(m.cow.map().present(9));
    CHECK_FALSE(m.cow.map().present(8));
    // Exactly aligned; then a write into a discarded cluster.
    m.discard(12 * C, 2 * C);
    m.write(12 * C + 50, pattern(10, 10));
    m.check_all();
    CHECK(m.cow.discard(0, 0) == 0);
}

TEST_CASE("cow disk: ranges beyond the disk fail with EIO and change nothing", "[cow]") {
    Dir dir;
    Model m(dir, 4 * C);
    Bytes buf(100, 0x5a);
    iovec v{buf.data(), buf.size()};
    CHECK(m.cow.read(4 * C - 99, {&v, 1}) == -EIO);
    CHECK(m.cow.write(4 * C - 99, {&v, 1}) == -EIO);
    CHECK(m.cow.write(UINT64_MAX - 10, {&v, 1}) == -EIO);
    CHECK(m.cow.discard(4 * C, 1) == -EIO);
    CHECK(m.cow.discard(1, UINT64_MAX) == -EIO);
    CHECK(m.cow.map().present_count() == 0);
    iovec none{buf.data(), 0};
    CHECK(m.cow.read(4 * C, {&none, 1}) == 0);
    CHECK(m.cow.write(4 * C, {&none, 1}) == 0);
    CHECK(m.cow.read(4 * C + 1, {&none, 1}) == -EIO);
    m.check_all();
}

TEST_CASE("cow disk: the partial last cluster", "[cow]") {
    Dir dir;
    Model m(dir, 3 * C + 1000);
    m.write(3 * C + 990, pattern(10, 11)); // the last bytes: copy-up of a 1000-byte cluster
    m.write(3 * C - 5, pattern(10, 12));
    CHECK(m.cow.map().present(3));
    m.check_all();
    m.discard(2 * C + 10, C + 990); // reaches the end: cluster 3 is whole
    m.check_all();
    m.write(3 * C, pattern(1000, 13)); // the whole last cluster
    m.check_all();
    const std::string out = dir.file("out.img");
    m.cow.export_to(out);
    CHECK(read_file(out) == m.disk);
}

TEST_CASE("cow disk: export_to writes the disk as read, sparse, and replaces the target atomically", "[cow]") {
    Dir dir;
    const std::size_t size = 512 * C; // 2 MiB: two export chunks
    Model m(dir, size);
    m.discard(0, size);                    // all zero
    m.write(5 * C + 3, pattern(100, 14));  // a little data in the first chunk
    m.write(300 * C, pattern(2 * C, 15));  // and in the second
    const std::string out = dir.file("keep.img");
    write_file(out, Bytes(10, 1)); // an older file at the target is replaced
    m.cow.export_to(out);
    CHECK(read_file(out) == m.disk);
    CHECK(allocated_bytes(out) < size / 4); // the zero clusters are holes
    CHECK(dir.entries() == 2);              // base and out: no temporary file left
    m.check_all();

    // A base whose data stays: export equals base where untouched.
    Dir dir2;
    Model n(dir2, 64 * C + 7, 3);
    n.write(7, pattern(C, 16));
    const std::string out2 = dir2.file("keep.img");
    n.cow.export_to(out2);
    CHECK(read_file(out2) == n.disk);

    // A target in a missing directory: an error naming it, nothing written.
    REQUIRE_THROWS_AS(n.cow.export_to(dir2.file("missing/keep.img")), SystemError);
    CHECK_THROWS_WITH(n.cow.export_to(dir2.file("missing/keep.img")), Catch::Contains("missing/keep.img"));
    CHECK(dir2.entries() == 2);
}

TEST_CASE("cow disk: a random sequence of operations matches a byte-vector model", "[cow]") {
    Dir dir;
    const std::size_t size = 64 * C + 1234;
    Model m(dir, size, 7);
    std::mt19937_64 rng(0xC0FFEE);
    const auto pick_off = [&](std::uint64_t limit) -> std::uint64_t {
        // Often near a cluster boundary, where copy-up and run splitting have their edges.
        if (rng() % 2 == 0) {
            const std::uint64_t c = rng() % (limit / C + 1);
            const std::int64_t d = static_cast<std::int64_t>(rng() % 9) - 4;
            const std::int64_t o = static_cast<std::int64_t>(c * C) + d;
            return static_cast<std::uint64_t>(std::clamp<std::int64_t>(o, 0, static_cast<std::int64_t>(limit)));
        }
        return rng() % (limit + 1);
    };
    for (int op = 0; op < 4000; ++op) {
        const std::uint64_t off = pick_off(size);
        const std::uint64_t max_len = std::min<std::uint64_t>(size - off, 5 * C);
        const std::uint64_t len = max_len == 0 ? 0 : rng() % (max_len + 1);
        const auto salt = static_cast<std::size_t>(rng());
        switch (rng() % 8) {
        case 0:
        case 1:
        case 2: {
            const Bytes got = m.read(off, static_cast<std::size_t>(len), salt);
            REQUIRE(got == Bytes(m.disk.begin() + static_cast<std::ptrdiff_t>(off), m.disk.begin() + static_cast<std::ptrdiff_t>(off + len)));
            break;
        }
        case 3:
        case 4:
        case 5: m.write(off, pattern(static_cast<std::size_t>(len), static_cast<std::uint32_t>(op)), salt); break;
        case 6: m.discard(off, len); break;
        default: REQUIRE(m.cow.flush() == 0); break;
        }
        if (op % 500 == 0) REQUIRE(m.read(0, size, salt) == m.disk);
    }
    m.check_all();
    const std::string out = dir.file("out.img");
    m.cow.export_to(out);
    CHECK(read_file(out) == m.disk);
}

TEST_CASE("cow disk: create fails with the path and the reason", "[cow]") {
    Dir dir;
    CHECK_THROWS_WITH(CowDisk::create(dir.file("nope.img"), dir.path), Catch::Contains("nope.img") && Catch::Contains("No such file"));
    write_file(dir.file("base.img"), pattern(C, 1));
    CHECK_THROWS_WITH(CowDisk::create(dir.file("base.img"), dir.file("no-dir")), Catch::Contains("no-dir"));
    CHECK_CONFIG_ERROR(CowDisk::create(dir.path, dir.path), "not a regular file");
    // An empty base is a disk of no bytes.
    write_file(dir.file("empty.img"), {});
    CowDisk e = CowDisk::create(dir.file("empty.img"), dir.path);
    CHECK(e.size() == 0);
    CHECK(e.map().clusters() == 0);
    iovec none{nullptr, 0};
    CHECK(e.read(0, {&none, 1}) == 0);
    CHECK(e.flush() == 0);
    e.export_to(dir.file("empty-out.img"));
    CHECK(read_file(dir.file("empty-out.img")).empty());
    // Moved, it keeps working.
    CowDisk moved = std::move(e);
    CHECK(moved.size() == 0);
}

TEST_CASE("cow disk: a copy-on-write drive opens its base read-only and is no writer of it", "[cow]") {
    Dir dir;
    const std::string base = dir.file("base.img");
    write_file(base, pattern(8 * C, 1));
    DriveConfig d{"root", base, true, false, std::nullopt, DriveCacheType::Unsafe, DriveIoEngine::Async, std::nullopt};
    d.cow = std::make_shared<CowDisk>(CowDisk::create(base, dir.path));
    OpenedDrive o = open_drive(d);
    CHECK((::fcntl(o.fd.get(), F_GETFL) & O_ACCMODE) == O_RDONLY);
    CHECK(o.size == 8 * C);
    // Two copy-on-write drives over one base are fine; a plain writable drive beside one is not.
    DriveConfig d2 = d;
    d2.drive_id = "other";
    d2.is_root_device = false;
    d2.cow = std::make_shared<CowDisk>(CowDisk::create(base, dir.path));
    CHECK(open_drives({d, d2}).size() == 2);
    DriveConfig plain = d2;
    plain.cow = nullptr;
    CHECK_CONFIG_ERROR(open_drives({d, plain}), "the same file");
    // The layer must be over path_on_host itself.
    const std::string other = dir.file("other.img");
    write_file(other, pattern(8 * C, 2));
    DriveConfig wrong = d;
    wrong.path_on_host = other;
    CHECK_CONFIG_ERROR(open_drive(wrong), "copy-on-write layer is over another file");
}

// ------------------------------------------------------------------------------------------
// file_clone

TEST_CASE("file clone: try_reflink shares the file or reports that it cannot, leaving nothing", "[cow]") {
    Dir dir;
    const std::string src = dir.file("src.img"), dst = dir.file("dst.img");
    const Bytes data = pattern(10 * C, 4);
    write_file(src, data);
    const bool linked = try_reflink(src, dst);
    if (linked) {
        CHECK(read_file(dst) == data);
        write_file(dst, Bytes(5, 0)); // the clone is a file of its own
        CHECK(read_file(src) == data);
    } else {
        // EOPNOTSUPP/EXDEV/...: the caller falls back to the overlay; no file or temp is left.
        CHECK_FALSE(std::filesystem::exists(dst));
        CHECK(dir.entries() == 1);
    }
    CHECK_THROWS_AS(try_reflink(dir.file("missing.img"), dst), SystemError);
    CHECK_THROWS_WITH(try_reflink(dir.file("missing.img"), dst), Catch::Contains("missing.img"));
}

TEST_CASE("file clone: copy_file_sparse copies bytes and keeps holes", "[cow]") {
    Dir dir;
    const std::string src = dir.file("src.img"), dst = dir.file("dst.img");
    const std::uint64_t size = 256 * C;
    {
        const int fd = ::open(src.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
        const Bytes a = pattern(3 * C, 5), b = pattern(100, 6);
        REQUIRE(::pwrite(fd, a.data(), a.size(), static_cast<off_t>(8 * C)) == static_cast<ssize_t>(a.size()));
        REQUIRE(::pwrite(fd, b.data(), b.size(), static_cast<off_t>(size - 100)) == 100);
        ::close(fd);
    }
    write_file(dst, Bytes(7, 7)); // replaced
    copy_file_sparse(src, dst);
    CHECK(read_file(dst) == read_file(src));
    CHECK(allocated_bytes(dst) <= allocated_bytes(src) + 4 * C);
    CHECK(allocated_bytes(dst) < size / 4);
    CHECK(dir.entries() == 2);
    CHECK_THROWS_WITH(copy_file_sparse(dir.file("missing.img"), dst), Catch::Contains("missing.img"));
    CHECK_THROWS_WITH(copy_file_sparse(src, dir.file("no/dst.img")), Catch::Contains("no/dst.img"));
    CHECK(read_file(dst) == read_file(src));
}
