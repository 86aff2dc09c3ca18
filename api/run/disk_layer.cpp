#include "api/run/disk_layer.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/unique_fd.hpp"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace ember::run {
namespace {

UniqueFd open_or_throw(const std::string& path, int flags, const std::string& what) {
    UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC, 0644));
    if (!fd.valid()) throw_errno("cannot open " + what + " " + path);
    return fd;
}

// Copies src to a new dst: a reflink where the filesystem can, else copy_file_range (which keeps
// holes on most filesystems and copies in the kernel).
void copy_image(const std::string& src, const std::string& dst, bool& reflinked) {
    UniqueFd in = open_or_throw(src, O_RDONLY, "image");
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) throw_errno("stat " + src);
    UniqueFd out = open_or_throw(dst, O_WRONLY | O_CREAT | O_EXCL, "layer");
    reflinked = ::ioctl(out.get(), FICLONE, in.get()) == 0;
    if (reflinked) return;
    if (::ftruncate(out.get(), st.st_size) != 0) throw_errno("ftruncate " + dst);
    off_t pos = 0;
    while (pos < st.st_size) {
        off_t data = ::lseek(in.get(), pos, SEEK_DATA);
        if (data < 0) break; // only a hole is left
        off_t hole = ::lseek(in.get(), data, SEEK_HOLE);
        if (hole < 0) hole = st.st_size;
        off_t a = data, b = data;
        while (a < hole) {
            ssize_t n = ::copy_file_range(in.get(), &a, out.get(), &b, static_cast<std::size_t>(hole - a), 0);
            if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)) {
                // Another filesystem (before Linux 5.19 only same-type copies are offloaded).
                char buf[1 << 16];
                n = ::pread(in.get(), buf, static_cast<std::size_t>(std::min<off_t>(hole - a, sizeof buf)), a);
                if (n > 0 && ::pwrite(out.get(), buf, static_cast<std::size_t>(n), b) != n) n = -1;
                if (n > 0) {
                    a += n;
                    b += n;
                }
            }
            if (n <= 0) throw_errno("copying " + src + " to " + dst);
        }
        pos = hole;
    }
}

} // namespace

DiskLayer DiskLayer::create(const std::string& image, const std::string& scratch_dir) {
    static unsigned counter = 0;
    DiskLayer l;
    l.image_ = image;
    l.clone_ = scratch_dir + "/disk" + std::to_string(counter++) + ".img";
    bool reflinked = false;
    copy_image(image, l.clone_, reflinked);
    return l;
}

void DiskLayer::configure(DriveConfig& d) const {
    d.path_on_host = clone_;
    d.is_read_only = false;
}

void DiskLayer::export_to(const std::string& out) const {
    const std::string tmp = out + ".ember-tmp";
    ::unlink(tmp.c_str());
    bool reflinked = false;
    try {
        copy_image(clone_, tmp, reflinked);
        UniqueFd f = open_or_throw(tmp, O_RDONLY, "copy");
        if (::fsync(f.get()) != 0) throw_errno("fsync " + tmp);
    } catch (...) {
        ::unlink(tmp.c_str());
        throw;
    }
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
        const int err = errno;
        ::unlink(tmp.c_str());
        throw SystemError("rename " + tmp + " to " + out, err);
    }
}

} // namespace ember::run
