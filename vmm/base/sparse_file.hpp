#pragma once
// Sparse files: where their data lies (SEEK_DATA/SEEK_HOLE, lseek(2)) and layering one file's
// data over another's, the merge of a Diff snapshot's memory file onto its base
// (`ember snapshot-merge`, Firecracker's rebase-snap / `snapshot-editor edit-memory rebase`).
//
// A Diff memory file holds the pages written since the previous snapshot as data and every
// other page as a hole (vmm/snapshot_memory.hpp), so copying its data extents over the base at
// the same offsets yields the memory of the later snapshot.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ember {

struct Extent {
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bool operator==(const Extent&) const = default;
};

// The data extents of `fd`, in order, [0, size). A filesystem without hole reporting gives one
// extent for the whole file. Throws ConfigError "Failed to seek data: ..." naming `path`.
std::vector<Extent> data_extents(int fd, const std::string& path);

// Copies bytes [off, off + len) of `from` to the same offsets of `to` (copy_file_range, or
// pread/pwrite where the kernel cannot). Throws ConfigError naming `to_path`.
void copy_range(int from, int to, std::uint64_t off, std::uint64_t len, const std::string& to_path);

// Copies every data extent of `diff_fd` onto `base_fd` at the same offset; returns the bytes
// copied. Both files must be the same size (checked by merge_memory_files()).
std::uint64_t merge_extents(int base_fd, int diff_fd, const std::string& base_path, const std::string& diff_path);

struct MergeSummary {
    std::string result;           // the file that holds the merged memory
    std::uint64_t bytes_copied = 0; // data bytes of the diffs copied (and of BASE with --out)
};

// Applies `diffs` to `base` in the order given (the order they were created). With `out`, BASE
// is left untouched: its data is copied to a new file written beside `out` and renamed over it
// at the end (so a VM running from `out` keeps the old inode). Refuses, changing nothing, when
// a file is not a regular file ("Invalid base file: ...", "Invalid diff file: ...", as
// Firecracker's rebase-snap), when sizes differ ("DIFF is N bytes, BASE is M: not layers of one
// VM"), or when `out` is BASE or a DIFF. Throws ConfigError.
MergeSummary merge_memory_files(const std::string& base, const std::vector<std::string>& diffs,
                                const std::optional<std::string>& out);

} // namespace ember
