#include "vmm/base/sparse_file.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/unique_fd.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

namespace ember {
namespace {

struct Opened {
    UniqueFd fd;
    struct stat st {};
};

Opened open_layer(const std::string& path, int flags, const char* role) {
    Opened o;
    o.fd = UniqueFd(::open(path.c_str(), flags | O_CLOEXEC));
    if (!o.fd.valid()) throw ConfigError(std::string("Invalid ") + role + " file: " + path + ": " + std::strerror(errno));
    if (::fstat(o.fd.get(), &o.st) != 0)
        throw ConfigError(std::string("Invalid ") + role + " file: " + path + ": " + std::strerror(errno));
    if (!S_ISREG(o.st.st_mode)) throw ConfigError(std::string("Invalid ") + role + " file: " + path + " is not a regular file");
    return o;
}

bool same_file(const struct stat& a, const struct stat& b) noexcept { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

} // namespace

std::vector<Extent> data_extents(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw ConfigError("Failed to seek data: " + path + ": " + std::strerror(errno));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    std::vector<Extent> out;
    std::uint64_t at = 0;
    while (at < size) {
        const off_t data = ::lseek(fd, static_cast<off_t>(at), SEEK_DATA);
        if (data < 0) {
            if (errno == ENXIO) break; // only a hole from `at` to the end
            throw ConfigError("Failed to seek data: " + path + ": " + std::strerror(errno));
        }
        off_t hole = ::lseek(fd, data, SEEK_HOLE);
        if (hole < 0) throw ConfigError("Failed to seek hole: " + path + ": " + std::strerror(errno));
        const auto start = static_cast<std::uint64_t>(data);
        const auto end = std::min(static_cast<std::uint64_t>(hole), size);
        if (end <= start) break;
        out.push_back({start, end - start});
        at = end;
    }
    return out;
}

void copy_range(int from, int to, std::uint64_t off, std::uint64_t len, const std::string& to_path) {
    std::uint64_t done = 0;
    bool fallback = false;
    std::vector<char> buf;
    while (done < len) {
        auto in = static_cast<off_t>(off + done), outo = static_cast<off_t>(off + done);
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(len - done, std::uint64_t{1} << 30));
        ssize_t n = -1;
        if (!fallback) {
            n = ::copy_file_range(from, &in, to, &outo, want, 0);
            // Kernels and filesystems that cannot copy between these files (copy_file_range(2)).
            if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                fallback = true;
                continue;
            }
        } else {
            if (buf.empty()) buf.resize(1 << 20);
            const std::size_t chunk = std::min(want, buf.size());
            n = ::pread(from, buf.data(), chunk, static_cast<off_t>(off + done));
            if (n > 0) {
                for (ssize_t w = 0; w < n;) {
                    const ssize_t m = ::pwrite(to, buf.data() + w, static_cast<std::size_t>(n - w), static_cast<off_t>(off + done) + w);
                    if (m < 0 && errno == EINTR) continue;
                    if (m <= 0) throw ConfigError("cannot write " + to_path + ": " + std::strerror(m < 0 ? errno : EIO));
                    w += m;
                }
            }
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw ConfigError("cannot copy into " + to_path + ": " + std::strerror(errno));
        if (n == 0) throw ConfigError("cannot copy into " + to_path + ": the source ended early");
        done += static_cast<std::uint64_t>(n);
    }
}

std::uint64_t merge_extents(int base_fd, int diff_fd, const std::string& base_path, const std::string& diff_path) {
    std::uint64_t copied = 0;
    for (const auto& e : data_extents(diff_fd, diff_path)) {
        copy_range(diff_fd, base_fd, e.offset, e.length, base_path);
        copied += e.length;
    }
    return copied;
}

MergeSummary merge_memory_files(const std::string& base, const std::vector<std::string>& diffs,
                                const std::optional<std::string>& out) {
    if (diffs.empty()) throw ConfigError("Invalid diff file: at least one DIFF is needed");
    // Everything is checked before anything is written.
    Opened b = open_layer(base, out ? O_RDONLY : O_RDWR, "base");
    std::vector<Opened> layers;
    for (const auto& d : diffs) {
        Opened o = open_layer(d, O_RDONLY, "diff");
        if (o.st.st_size != b.st.st_size)
            throw ConfigError(d + " is " + std::to_string(o.st.st_size) + " bytes, " + base + " is " +
                              std::to_string(b.st.st_size) + ": not layers of one VM");
        if (same_file(o.st, b.st)) throw ConfigError("Invalid diff file: " + d + " is the base file itself");
        layers.push_back(std::move(o));
    }
    MergeSummary sum;
    UniqueFd target;
    std::string tmp;
    if (out) {
        struct stat st {};
        if (::stat(out->c_str(), &st) == 0) {
            if (same_file(st, b.st)) throw ConfigError("--out " + *out + " is the base file: leave --out out to merge in place");
            for (std::size_t i = 0; i < layers.size(); ++i)
                if (same_file(st, layers[i].st)) throw ConfigError("--out " + *out + " is the diff file " + diffs[i]);
        }
        tmp = *out + ".tmp." + std::to_string(::getpid());
        target = UniqueFd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        if (!target.valid()) throw ConfigError("cannot create " + tmp + ": " + std::strerror(errno));
        sum.result = *out;
    } else {
        sum.result = base;
    }
    try {
        const std::string& target_path = out ? tmp : base;
        if (out) {
            // BASE's data only: its holes stay holes in the copy.
            if (::ftruncate(target.get(), b.st.st_size) != 0) throw ConfigError("cannot size " + tmp + ": " + std::strerror(errno));
            for (const auto& e : data_extents(b.fd.get(), base)) {
                copy_range(b.fd.get(), target.get(), e.offset, e.length, tmp);
                sum.bytes_copied += e.length;
            }
        }
        const int to = out ? target.get() : b.fd.get();
        for (std::size_t i = 0; i < layers.size(); ++i) sum.bytes_copied += merge_extents(to, layers[i].fd.get(), target_path, diffs[i]);
        if (::fsync(to) != 0 && errno != EINVAL) throw ConfigError("cannot sync " + target_path + ": " + std::strerror(errno));
        if (out && ::rename(tmp.c_str(), out->c_str()) != 0)
            throw ConfigError("cannot rename " + tmp + " to " + *out + ": " + std::strerror(errno));
    } catch (...) {
        if (out) ::unlink(tmp.c_str());
        throw;
    }
    return sum;
}

} // namespace ember
