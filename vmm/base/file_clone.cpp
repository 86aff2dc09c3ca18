#include "vmm/base/file_clone.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/sparse_file.hpp"

#include <atomic>
#include <cerrno>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember {
namespace {

std::string dir_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

std::atomic<unsigned> temp_counter{0};

} // namespace

ReplacingFile::ReplacingFile(std::string path) : path_(std::move(path)) {
    // pid and a per-process counter make the name unique among Ember processes; O_EXCL refuses
    // a leftover of an earlier process with the same pid, and the next number is tried.
    for (int attempt = 0;; ++attempt) {
        tmp_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(temp_counter++);
        fd_.reset(::open(tmp_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
        if (fd_.valid()) return;
        if (errno != EEXIST || attempt >= 100) throw_errno("cannot create " + tmp_);
    }
}

ReplacingFile::ReplacingFile(ReplacingFile&& o) noexcept
    : path_(std::move(o.path_)), tmp_(std::move(o.tmp_)), fd_(std::move(o.fd_)), committed_(std::exchange(o.committed_, true)) {}

ReplacingFile::~ReplacingFile() {
    if (!committed_ && !tmp_.empty()) ::unlink(tmp_.c_str());
}

void ReplacingFile::commit() {
    if (::fsync(fd_.get()) != 0) throw_errno("cannot sync " + tmp_);
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) throw_errno("cannot rename " + tmp_ + " to " + path_);
    committed_ = true;
    // The data is durable already; this makes the new name durable too. A directory that
    // cannot be opened or synced (EINVAL on some filesystems) leaves the rename to the
    // filesystem's own journal, which is not an error for the copy.
    UniqueFd dir(::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir.valid()) (void)::fsync(dir.get());
}

bool try_reflink(const std::string& src, const std::string& dst) {
    UniqueFd in = UniqueFd::open(src, O_RDONLY, "reflink: cannot open");
    ReplacingFile out(dst);
    if (::ioctl(out.fd(), FICLONE, in.get()) != 0) {
        const int err = errno;
        if (err == EXDEV || err == EOPNOTSUPP || err == EINVAL || err == ENOTTY) return false;
        throw SystemError("reflink " + src + " to " + dst, err);
    }
    out.commit();
    return true;
}

void copy_file_sparse(const std::string& src, const std::string& dst) {
    UniqueFd in = UniqueFd::open(src, O_RDONLY, "copy: cannot open");
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) throw_errno("copy: cannot stat " + src);
    if (!S_ISREG(st.st_mode)) throw ConfigError("copy: " + src + " is not a regular file");
    ReplacingFile out(dst);
    if (::ftruncate(out.fd(), st.st_size) != 0) throw_errno("cannot size " + out.temp_path());
    for (const auto& e : data_extents(in.get(), src)) copy_range(in.get(), out.fd(), e.offset, e.length, out.temp_path());
    out.commit();
}

} // namespace ember
