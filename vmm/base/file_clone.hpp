#pragma once
// Whole-file copies of disk images (`ember run`'s throwaway disks and --keep-disk): reflinks
// (ioctl FICLONE, ioctl_ficlone(2)), which share the source's extents until either file is
// written, and sparse copies where the filesystem cannot reflink. Every copy is written beside
// its target under a temporary name and renamed over it at the end, so a failed copy leaves
// no half-written file at the target's path.

#include "vmm/base/unique_fd.hpp"

#include <string>

namespace ember {

// A new file that will replace `path`: created (O_CREAT|O_EXCL, mode 0666 less the umask, as
// any new file) under a temporary name in `path`'s directory, so that commit()'s rename is
// atomic. commit() fsyncs it, renames it over `path` and fsyncs the directory; destroyed
// without commit(), the temporary file is unlinked. Move-only.
class ReplacingFile {
public:
    // Throws SystemError naming the temporary path.
    explicit ReplacingFile(std::string path);
    ReplacingFile(ReplacingFile&& o) noexcept;
    ReplacingFile& operator=(ReplacingFile&&) = delete;
    ReplacingFile(const ReplacingFile&) = delete;
    ReplacingFile& operator=(const ReplacingFile&) = delete;
    ~ReplacingFile();

    int fd() const noexcept { return fd_.get(); }
    const std::string& temp_path() const noexcept { return tmp_; }
    // Throws SystemError naming the file; the temporary file is then still unlinked by the
    // destructor, and `path` is what it was before.
    void commit();

private:
    std::string path_, tmp_;
    UniqueFd fd_;
    bool committed_ = false;
};

// Makes `dst` a reflink of `src` (same filesystem, one that shares extents: btrfs, XFS with
// reflink=1, bcachefs, ...). Returns false, leaving `dst` as it was, when the filesystem
// cannot: EXDEV (different filesystems), EOPNOTSUPP, EINVAL, ENOTTY (tmpfs, ext4, overlayfs
// without support). Throws SystemError on any other failure (an unreadable `src`, a full disk).
bool try_reflink(const std::string& src, const std::string& dst);

// Copies regular file `src` to `dst` with the same size and holes where `src` has them
// (SEEK_DATA/SEEK_HOLE; copy_file_range, which reflinks where the filesystem can). Throws
// ConfigError or SystemError naming the file; `dst` is then as it was.
void copy_file_sparse(const std::string& src, const std::string& dst);

} // namespace ember
