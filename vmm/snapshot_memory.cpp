#include "vmm/snapshot_memory.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/unique_fd.hpp"
#include "vmm/kvm/kvm.hpp"

#include <array>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember {
namespace {

constexpr std::size_t kPage = GuestMemory::PAGE_SIZE;

bool all_zero(const std::byte* p) noexcept {
    static const std::array<std::byte, kPage> zero{};
    return std::memcmp(p, zero.data(), kPage) == 0;
}

std::string err(const std::string& what, const std::string& path, int e) {
    return what + " " + path + ": " + std::strerror(e);
}

void pwrite_all(int fd, const std::byte* p, std::size_t len, std::uint64_t off, const std::string& path) {
    for (std::size_t done = 0; done < len;) {
        const ssize_t n = ::pwrite(fd, p + done, len - done, static_cast<off_t>(off + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) throw ConfigError(err("cannot write memory file", path, n < 0 ? errno : EIO));
        done += static_cast<std::size_t>(n);
    }
}

void fsync_or_throw(int fd, const std::string& path) {
    if (::fsync(fd) != 0 && errno != EINVAL) throw ConfigError(err("cannot sync memory file", path, errno));
}

bool bit(const std::vector<std::uint64_t>& bm, std::size_t page) noexcept {
    return page / 64 < bm.size() && (bm[page / 64] >> (page % 64) & 1u) != 0;
}

} // namespace

void write_full_memory(const GuestMemory& mem, const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (!fd.valid()) throw ConfigError(err("cannot create memory file", path, errno));
    if (::ftruncate(fd.get(), static_cast<off_t>(mem.total_size())) != 0)
        throw ConfigError(err("cannot size memory file", path, errno));
    for (const auto& r : mem.regions()) {
        const std::size_t size = static_cast<std::size_t>(r.range.size());
        std::size_t at = 0;
        while (at < size) {
            if (all_zero(r.host + at)) {
                at += kPage;
                continue;
            }
            std::size_t end = at + kPage;
            while (end < size && !all_zero(r.host + end)) end += kPage;
            pwrite_all(fd.get(), r.host + at, end - at, r.offset + at, path);
            at = end;
        }
    }
    fsync_or_throw(fd.get(), path);
}

std::uint64_t write_diff_memory(const GuestMemory& mem, const DirtyBitmaps& dirty, const std::string& path) {
    if (dirty.size() != mem.regions().size()) throw ConfigError("internal: a dirty bitmap per memory region is needed");
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    if (!fd.valid()) throw ConfigError(err("cannot create memory file", path, errno));
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) throw ConfigError(err("cannot stat memory file", path, errno));
    const bool regular = S_ISREG(st.st_mode);
    const auto total = static_cast<off_t>(mem.total_size());
    // A page written into a larger block allocates all of it: the rest reads as zeros and a merge
    // would copy those zeros over the base's pages.
    if (regular && st.st_blksize > static_cast<blksize_t>(kPage))
        throw ConfigError("the filesystem of " + path + " uses " + std::to_string(st.st_blksize) +
                          "-byte blocks: a Diff memory file there (written in 4096-byte pages) cannot be merged");
    bool fresh = false;
    if (regular && st.st_size != total) {
        if (::ftruncate(fd.get(), 0) != 0 || ::ftruncate(fd.get(), total) != 0)
            throw ConfigError(err("cannot size memory file", path, errno));
        fresh = true;
    }
    std::uint64_t written = 0, skipped = 0;
    for (std::size_t i = 0; i < mem.regions().size(); ++i) {
        const auto& r = mem.regions()[i];
        const std::size_t pages = static_cast<std::size_t>(r.range.size() / kPage);
        std::size_t p = 0;
        while (p < pages) {
            if (!bit(dirty[i], p)) {
                ++p;
                ++skipped;
                continue;
            }
            std::size_t end = p + 1;
            while (end < pages && bit(dirty[i], end)) ++end;
            pwrite_all(fd.get(), r.host + p * kPage, (end - p) * kPage, r.offset + p * kPage, path);
            written += end - p;
            p = end;
        }
    }
    // SEEK_HOLE answers the file's end when there is no hole, or when the filesystem does not
    // report holes (lseek(2): then the whole file is data): either way nothing can be merged.
    if (fresh && skipped > 0 && ::lseek(fd.get(), 0, SEEK_HOLE) == total)
        throw ConfigError("the filesystem of " + path + " does not keep holes: a Diff memory file there cannot be merged");
    fsync_or_throw(fd.get(), path);
    return written;
}

DirtyBitmaps take_dirty(GuestMemory& mem, const VmFd& vm, bool tracking) {
    DirtyBitmaps out;
    const auto& regions = mem.regions();
    try {
        for (std::size_t i = 0; i < regions.size(); ++i) {
            if (!tracking) {
                out.push_back(mem.resident_bitmap(i));
                continue;
            }
            // Slot i is region i (VmFd::register_memory).
            auto bm = vm.get_dirty_log(static_cast<std::uint32_t>(i), regions[i].range.size() / kPage);
            const auto dev = mem.take_dirty_bitmap(i);
            for (std::size_t w = 0; w < bm.size() && w < dev.size(); ++w) bm[w] |= dev[w];
            out.push_back(std::move(bm));
        }
    } catch (...) {
        restore_dirty(mem, out, tracking); // the regions already taken
        throw;
    }
    return out;
}

void restore_dirty(GuestMemory& mem, const DirtyBitmaps& bitmaps, bool tracking) noexcept {
    if (!tracking) return;
    for (std::size_t i = 0; i < bitmaps.size(); ++i) mem.restore_dirty_bitmap(i, bitmaps[i]);
}

} // namespace ember
