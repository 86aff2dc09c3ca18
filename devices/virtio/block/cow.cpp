#include "devices/virtio/block/cow.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/file_clone.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember::virtio::block {

// ---- CowMap ----

CowMap::CowMap(std::uint64_t disk_bytes)
    : bytes_(disk_bytes), clusters_(disk_bytes / CLUSTER + (disk_bytes % CLUSTER != 0)), bits_((clusters_ + 63) / 64, 0) {}

std::uint64_t CowMap::cluster_end(std::uint64_t c) const noexcept { return std::min((c + 1) * CLUSTER, bytes_); }

bool CowMap::contains(std::uint64_t offset, std::uint64_t len) const noexcept { return offset <= bytes_ && len <= bytes_ - offset; }

bool CowMap::present(std::uint64_t c) const noexcept { return c < clusters_ && ((bits_[c / 64] >> (c % 64)) & 1U) != 0; }

void CowMap::set_present(ClusterRange r) noexcept {
    for (std::uint64_t c = r.first; c < std::min(r.end, clusters_); ++c) {
        std::uint64_t& w = bits_[c / 64];
        const std::uint64_t m = std::uint64_t{1} << (c % 64);
        if ((w & m) == 0) {
            w |= m;
            ++present_count_;
        }
    }
}

bool CowMap::any_present(ClusterRange r) const noexcept {
    const std::uint64_t end = std::min(r.end, clusters_);
    return r.first < end && next_change(r.first, end, false) < end;
}

std::uint64_t CowMap::next_change(std::uint64_t c, std::uint64_t end, bool value) const noexcept {
    // Word at a time: the bits from c on that differ from `value`, masked to the word's rest.
    while (c < end) {
        const unsigned shift = static_cast<unsigned>(c % 64);
        std::uint64_t word = bits_[c / 64];
        if (value) word = ~word;
        word >>= shift;
        if (word != 0) return std::min(end, c + static_cast<std::uint64_t>(std::countr_zero(word)));
        c += 64 - shift;
    }
    return end;
}

CowMap::ClusterRange CowMap::touched(std::uint64_t offset, std::uint64_t len) const noexcept {
    if (len == 0) return {offset / CLUSTER, offset / CLUSTER};
    return {offset / CLUSTER, (offset + len - 1) / CLUSTER + 1};
}

CowMap::ClusterRange CowMap::covered(std::uint64_t offset, std::uint64_t len) const noexcept {
    const std::uint64_t first = offset / CLUSTER + (offset % CLUSTER != 0);
    const std::uint64_t stop = offset + len;
    const std::uint64_t end = stop == bytes_ ? clusters_ : stop / CLUSTER;
    return {first, std::max(first, end)};
}

CowMap::CopyUps CowMap::copy_ups(std::uint64_t offset, std::uint64_t len) const noexcept {
    CopyUps cu;
    if (len == 0) return cu;
    const ClusterRange t = touched(offset, len);
    const std::uint64_t stop = offset + len;
    const std::uint64_t head = t.first, tail = t.end - 1;
    if (!present(head) && (offset > cluster_begin(head) || stop < cluster_end(head))) cu.cluster[cu.count++] = head;
    if (tail != head && !present(tail) && stop < cluster_end(tail)) cu.cluster[cu.count++] = tail;
    return cu;
}

CowMap::Run CowMap::run_at(std::uint64_t offset, std::uint64_t stop) const noexcept {
    const ClusterRange t = touched(offset, stop - offset);
    const bool p = present(t.first);
    const std::uint64_t next = next_change(t.first, t.end, p);
    return {offset, std::min(stop, cluster_end(next - 1)) - offset, p};
}

void CowMap::runs(std::uint64_t offset, std::uint64_t len, std::vector<Run>& out) const {
    out.clear();
    for (std::uint64_t at = offset, stop = offset + len; at < stop;) {
        out.push_back(run_at(at, stop));
        at += out.back().length;
    }
}

// ---- CowDisk ----

namespace {

// Zeroes for discard's edges and the overlay writes where holes cannot be punched.
const std::byte kZeros[CowMap::CLUSTER] = {};

iovec zero_iov(std::uint64_t len) noexcept {
    // The kernel only reads from a write's buffers.
    return iovec{const_cast<std::byte*>(kZeros), static_cast<std::size_t>(len)};
}

std::int64_t iov_total(std::span<const iovec> iov) noexcept {
    // At most IOV_MAX buffers (a virtio chain has at most a queue size of them): slice_, reserved
    // for that many, then never reallocates on the I/O path.
    if (iov.size() > static_cast<std::size_t>(IOV_MAX)) return -EINVAL;
    std::uint64_t t = 0;
    for (const auto& v : iov) {
        if (v.iov_len > static_cast<std::uint64_t>(INT64_MAX) - t) return -EINVAL;
        t += v.iov_len;
    }
    return static_cast<std::int64_t>(t);
}

// Takes consecutive byte ranges of an iovec list as iovec lists of their own.
class IovCursor {
public:
    explicit IovCursor(std::span<const iovec> src) noexcept : src_(src) {}
    // `out` needs room for src.size() entries (reserved: it never reallocates here).
    void take(std::uint64_t n, std::vector<iovec>& out) noexcept {
        out.clear();
        while (n > 0 && i_ < src_.size()) {
            const iovec& v = src_[i_];
            const std::uint64_t k = std::min<std::uint64_t>(v.iov_len - off_, n);
            if (k > 0) out.push_back(iovec{static_cast<std::byte*>(v.iov_base) + off_, static_cast<std::size_t>(k)});
            off_ += k;
            n -= k;
            if (off_ == v.iov_len) {
                ++i_;
                off_ = 0;
            }
        }
    }

private:
    std::span<const iovec> src_;
    std::size_t i_ = 0;
    std::uint64_t off_ = 0;
};

// preadv/pwritev until all of `iov` (consumed in place) is transferred: the byte count or
// -errno; -EIO when the file ends first.
std::int64_t transfer(int fd, bool write, std::uint64_t offset, std::span<iovec> iov) noexcept {
    std::size_t first = 0;
    std::uint64_t done = 0;
    while (first < iov.size()) {
        if (iov[first].iov_len == 0) {
            ++first;
            continue;
        }
        const int cnt = static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX));
        const auto off = static_cast<off_t>(offset + done);
        const ssize_t n = write ? ::pwritev(fd, iov.data() + first, cnt, off) : ::preadv(fd, iov.data() + first, cnt, off);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) return -errno;
        if (n == 0) return -EIO;
        auto left = static_cast<std::uint64_t>(n);
        done += left;
        while (left > 0) {
            iovec& v = iov[first];
            if (left >= v.iov_len) {
                left -= v.iov_len;
                v.iov_len = 0;
                ++first;
            } else {
                v.iov_base = static_cast<std::byte*>(v.iov_base) + left;
                v.iov_len -= left;
                left = 0;
            }
        }
    }
    return static_cast<std::int64_t>(done);
}

std::uint64_t disk_size(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw_errno("copy-on-write disk: cannot stat " + path);
    if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
    if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) throw_errno("copy-on-write disk: BLKGETSIZE64 of " + path);
        return bytes;
    }
    throw ConfigError("copy-on-write disk: " + path + " is not a regular file or block device");
}

UniqueFd make_overlay(const std::string& dir) {
    UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (fd.valid()) return fd;
    // Filesystems without O_TMPFILE: a named file, unlinked at once.
    const int tmpfile_err = errno;
    std::string name = dir + "/ember-cow-XXXXXX";
    fd.reset(::mkostemp(name.data(), O_CLOEXEC));
    if (!fd.valid())
        throw SystemError("copy-on-write overlay in " + dir + " (O_TMPFILE: " + std::strerror(tmpfile_err) + "; mkstemp)", errno);
    if (::unlink(name.c_str()) != 0) throw_errno("copy-on-write overlay: cannot unlink " + name);
    return fd;
}

} // namespace

CowDisk::CowDisk(UniqueFd base, UniqueFd overlay, std::uint64_t size, std::string base_path, std::uint64_t dev, std::uint64_t ino)
    : base_(std::move(base)), overlay_(std::move(overlay)), map_(size), base_path_(std::move(base_path)), dev_(dev), ino_(ino),
      bounce_(CLUSTER) {
    slice_.reserve(IOV_MAX);
}

CowDisk CowDisk::create(const std::string& base_path, const std::string& scratch_dir) {
    UniqueFd base(::open(base_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!base.valid()) throw_errno("copy-on-write disk: cannot open " + base_path);
    const std::uint64_t size = disk_size(base.get(), base_path);
    struct stat st {};
    if (::fstat(base.get(), &st) != 0) throw_errno("copy-on-write disk: cannot stat " + base_path);
    UniqueFd overlay = make_overlay(scratch_dir);
    if (::ftruncate(overlay.get(), static_cast<off_t>(size)) != 0)
        throw_errno("copy-on-write overlay in " + scratch_dir + ": cannot size it to " + std::to_string(size) + " bytes");
    return CowDisk(std::move(base), std::move(overlay), size, base_path, st.st_dev, st.st_ino);
}

std::int64_t CowDisk::read(std::uint64_t offset, std::span<const iovec> iov) noexcept {
    const std::int64_t total = iov_total(iov);
    if (total < 0) return total;
    const auto len = static_cast<std::uint64_t>(total);
    if (!map_.contains(offset, len)) return -EIO;
    IovCursor cur(iov);
    for (std::uint64_t at = offset; at < offset + len;) {
        const CowMap::Run r = map_.run_at(at, offset + len);
        at += r.length;
        cur.take(r.length, slice_);
        const std::int64_t rc = transfer(r.present ? overlay_.get() : base_.get(), false, r.offset, slice_);
        if (rc < 0) return rc;
    }
    return total;
}

std::int64_t CowDisk::copy_up(std::uint64_t cluster) noexcept {
    const std::uint64_t begin = map_.cluster_begin(cluster);
    const std::uint64_t len = map_.cluster_end(cluster) - begin;
    iovec v{bounce_.data(), static_cast<std::size_t>(len)};
    std::int64_t rc = transfer(base_.get(), false, begin, {&v, 1});
    if (rc < 0) return rc;
    v = iovec{bounce_.data(), static_cast<std::size_t>(len)};
    rc = transfer(overlay_.get(), true, begin, {&v, 1});
    if (rc < 0) return rc;
    map_.set_present({cluster, cluster + 1});
    return 0;
}

std::int64_t CowDisk::write(std::uint64_t offset, std::span<const iovec> iov) noexcept {
    const std::int64_t total = iov_total(iov);
    if (total < 0) return total;
    const auto len = static_cast<std::uint64_t>(total);
    if (!map_.contains(offset, len)) return -EIO;
    if (len == 0) return 0;
    const CowMap::CopyUps cu = map_.copy_ups(offset, len);
    for (unsigned i = 0; i < cu.count; ++i) {
        const std::int64_t rc = copy_up(cu.cluster[i]);
        if (rc < 0) return rc;
    }
    IovCursor cur(iov);
    cur.take(len, slice_);
    const std::int64_t rc = transfer(overlay_.get(), true, offset, slice_);
    if (rc < 0) return rc;
    // Every touched cluster is now whole in the overlay: the partial ones were copied up.
    map_.set_present(map_.touched(offset, len));
    return total;
}

std::int64_t CowDisk::flush() noexcept { return ::fdatasync(overlay_.get()) == 0 ? 0 : -errno; }

std::int64_t CowDisk::zero_range(std::uint64_t offset, std::uint64_t len) noexcept {
    while (len > 0) {
        const std::uint64_t k = std::min(len, CLUSTER);
        const iovec v = zero_iov(k);
        const std::int64_t rc = write(offset, {&v, 1});
        if (rc < 0) return rc;
        offset += k;
        len -= k;
    }
    return 0;
}

std::int64_t CowDisk::discard(std::uint64_t offset, std::uint64_t len) noexcept {
    if (!map_.contains(offset, len)) return -EIO;
    if (len == 0) return 0;
    const CowMap::ClusterRange cov = map_.covered(offset, len);
    if (cov.empty()) return zero_range(offset, len);
    const std::uint64_t begin = map_.cluster_begin(cov.first), end = map_.cluster_end(cov.end - 1);
    std::int64_t rc = zero_range(offset, begin - offset);
    if (rc < 0) return rc;
    if (::fallocate(overlay_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(begin),
                    static_cast<off_t>(end - begin)) == 0) {
        map_.set_present(cov); // only now: the overlay's clusters read as zeroes
    } else if (errno == EOPNOTSUPP || errno == ENOSYS) {
        rc = zero_range(begin, end - begin);
        if (rc < 0) return rc;
    } else {
        return -errno;
    }
    return zero_range(end, offset + len - end);
}

void CowDisk::export_to(const std::string& out_path) {
    ReplacingFile out(out_path);
    const std::uint64_t size = map_.disk_bytes();
    if (::ftruncate(out.fd(), static_cast<off_t>(size)) != 0) throw_errno("--keep-disk: cannot size " + out.temp_path());
    constexpr std::uint64_t CHUNK = 256 * CLUSTER;
    std::vector<std::byte> buf(CHUNK);
    for (std::uint64_t at = 0; at < size; at += CHUNK) {
        const std::uint64_t n = std::min(CHUNK, size - at);
        // A chunk with nothing in the overlay and only a hole in the base stays a hole.
        if (!map_.any_present(map_.touched(at, n))) {
            const off_t data = ::lseek(base_.get(), static_cast<off_t>(at), SEEK_DATA);
            if ((data < 0 && errno == ENXIO) || (data >= 0 && static_cast<std::uint64_t>(data) >= at + n)) continue;
        }
        iovec v{buf.data(), static_cast<std::size_t>(n)};
        const std::int64_t rc = read(at, {&v, 1});
        if (rc < 0) throw SystemError("--keep-disk: cannot read the disk (base " + base_path_ + ") at " + std::to_string(at),
                                      static_cast<int>(-rc));
        // Runs of clusters that are not all zero are written; zero clusters stay holes.
        for (std::uint64_t c = 0; c < n;) {
            const auto zero = [&](std::uint64_t o) {
                const std::uint64_t k = std::min(CLUSTER, n - o);
                return buf[o] == std::byte{0} && std::memcmp(buf.data() + o, buf.data() + o + 1, k - 1) == 0;
            };
            if (zero(c)) {
                c += CLUSTER;
                continue;
            }
            std::uint64_t e = c + CLUSTER;
            while (e < n && !zero(e)) e += CLUSTER;
            e = std::min(e, n);
            iovec w{buf.data() + c, static_cast<std::size_t>(e - c)};
            const std::int64_t wrc = transfer(out.fd(), true, at + c, {&w, 1});
            if (wrc < 0) throw SystemError("--keep-disk: cannot write " + out.temp_path(), static_cast<int>(-wrc));
            c = e;
        }
    }
    out.commit();
}

} // namespace ember::virtio::block
