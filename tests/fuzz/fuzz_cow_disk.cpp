// libFuzzer target: a copy-on-write disk (devices/virtio/block/cow.hpp) under a sequence of
// reads, writes, discards and flushes, checked against a byte vector holding what the disk
// must be. Input: 2 bytes choosing the disk size (16 to 64 KiB, any alignment, so the last
// cluster is often partial), then 8-byte operations: kind, offset (3 bytes), length (2 bytes),
// iovec split, flags. Offsets and lengths are folded into the disk unless the flags ask for
// raw values, which may lie beyond it. Invariants: in-range operations succeed and reads
// return the model's bytes; out-of-range ones fail with -EIO and change nothing; the base
// image is never written; export_to() yields the model.

#include "devices/virtio/block/cow.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <fcntl.h>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace {

using ember::virtio::block::CowDisk;
using Bytes = std::vector<std::uint8_t>;

constexpr std::uint64_t kMaxDisk = 64 * 1024;

void check(bool ok) {
    if (!ok) std::abort();
}

std::uint8_t base_byte(std::uint64_t i) noexcept { return static_cast<std::uint8_t>((i * 131 + (i >> 9) * 7 + 1) & 0xff); }

std::string scratch_dir() {
    struct stat st {};
    return ::stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) ? "/dev/shm" : "/tmp";
}

// The base image: one memfd for the whole run, reached by path through /proc/self/fd.
int base_fd() {
    static const int fd = ::memfd_create("ember-fuzz-cow-base", MFD_CLOEXEC);
    check(fd >= 0);
    return fd;
}

Bytes read_all(int fd, std::uint64_t n) {
    Bytes out(n);
    std::uint64_t done = 0;
    while (done < n) {
        const ssize_t r = ::pread(fd, out.data() + done, n - done, static_cast<off_t>(done));
        check(r > 0);
        done += static_cast<std::uint64_t>(r);
    }
    return out;
}

// Up to three iovecs over buf[0, len), split where `salt` says.
std::vector<iovec> split(std::uint8_t* buf, std::uint64_t len, std::uint8_t salt) {
    const std::uint64_t a = len == 0 ? 0 : (salt * 97U) % (len + 1);
    const std::uint64_t b = len - a == 0 ? 0 : (salt * 31U) % (len - a + 1);
    return {iovec{buf, a}, iovec{buf + a, b}, iovec{buf + a + b, len - a - b}};
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const std::uint64_t disk = 16 * 1024 + (std::uint64_t{data[0]} | std::uint64_t{data[1]} << 8) % (kMaxDisk - 16 * 1024 + 1);
    const int bfd = base_fd();
    check(::ftruncate(bfd, 0) == 0);
    Bytes model(disk);
    for (std::uint64_t i = 0; i < disk; ++i) model[i] = base_byte(i);
    check(::pwrite(bfd, model.data(), disk, 0) == static_cast<ssize_t>(disk));
    const Bytes base = model;

    CowDisk cow = CowDisk::create("/proc/self/fd/" + std::to_string(bfd), scratch_dir());
    check(cow.size() == disk);
    Bytes buf;
    std::uint32_t stamp = 0;
    for (std::size_t at = 2; at + 8 <= size; at += 8) {
        const std::uint8_t* op = data + at;
        const std::uint64_t raw_off = std::uint64_t{op[1]} | std::uint64_t{op[2]} << 8 | std::uint64_t{op[3]} << 16;
        const std::uint64_t raw_len = std::uint64_t{op[4]} | std::uint64_t{op[5]} << 8;
        const std::uint8_t salt = op[6], flags = op[7];
        std::uint64_t off = raw_off, len = raw_len;
        if ((flags & 1) == 0) { // folded into the disk
            off = raw_off % (disk + 1);
            len = raw_len % (disk - off + 1);
        }
        const bool inside = off <= disk && len <= disk - off;
        buf.assign(len, 0xa5);
        const auto iov = split(buf.data(), len, salt);
        switch (op[0] % 4) {
        case 0: {
            const std::int64_t rc = cow.read(off, iov);
            if (!inside) {
                check(rc == -EIO);
                break;
            }
            check(rc == static_cast<std::int64_t>(len));
            check(std::equal(buf.begin(), buf.end(), model.begin() + static_cast<std::ptrdiff_t>(off)));
            break;
        }
        case 1: {
            ++stamp;
            for (std::uint64_t i = 0; i < len; ++i) buf[i] = static_cast<std::uint8_t>((stamp * 29 + i * 3) & 0xff);
            const std::int64_t rc = cow.write(off, iov);
            if (!inside) {
                check(rc == -EIO);
                break;
            }
            check(rc == static_cast<std::int64_t>(len));
            std::copy(buf.begin(), buf.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
            break;
        }
        case 2: {
            const std::int64_t rc = cow.discard(off, len);
            if (!inside) {
                check(rc == -EIO);
                break;
            }
            check(rc == 0);
            std::fill_n(model.begin() + static_cast<std::ptrdiff_t>(off), len, 0);
            break;
        }
        default: check(cow.flush() == 0); break;
        }
    }
    Bytes all(disk);
    iovec whole{all.data(), all.size()};
    check(cow.read(0, {&whole, 1}) == static_cast<std::int64_t>(disk));
    check(all == model);
    check(read_all(bfd, disk) == base);
    if (data[0] & 1) {
        const std::string out = scratch_dir() + "/ember-fuzz-cow-" + std::to_string(::getpid()) + ".img";
        cow.export_to(out);
        const int fd = ::open(out.c_str(), O_RDONLY | O_CLOEXEC);
        check(fd >= 0);
        struct stat st {};
        check(::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) == disk);
        const bool same = read_all(fd, disk) == model;
        ::close(fd);
        ::unlink(out.c_str());
        check(same);
    }
    return 0;
}
