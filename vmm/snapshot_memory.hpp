#pragma once
// Guest RAM into a snapshot's memory file. The file is as long as all of RAM; region i sits at
// its offset in the backing mapping (MemoryRegion::offset), the layout the load maps back
// (GuestMemory::with_regions_from_file) and Firecracker's (regions back to back).
//
// Full: every page; all-zero pages are left as holes (they read back as zero).
// Diff: only the pages a bitmap marks (dirtied since the previous snapshot), every one of them
// written, zero or not; the others are holes. `ember snapshot-merge` (vmm/base/sparse_file.hpp)
// copies a Diff's data extents over its base, so a dirty page left as a hole would keep the
// base's stale bytes: holes must mean "unchanged" and nothing else.

#include "vmm/base/guest_memory.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace ember {

class VmFd;

enum class SnapshotType { Full, Diff };

// One bitmap per region, as GuestMemory::take_dirty_bitmap() lays them out.
using DirtyBitmaps = std::vector<std::vector<std::uint64_t>>;

// Writes a new file at `path` (O_TRUNC: give it a path nothing maps, e.g. a .tmp to rename),
// fsyncs it. Throws ConfigError naming `path`.
void write_full_memory(const GuestMemory& mem, const std::string& path);

// Writes the pages `dirty` marks to `path`, at their offsets. An existing regular file of RAM's
// size is written into in place (Firecracker's behaviour: a Diff onto the previous snapshot's
// memory file is an in-place merge); any other regular file is emptied and sized to RAM first.
// Refuses a filesystem whose preferred block is larger than a page, and one that turns the
// skipped pages into data (no holes), since neither file could be merged. fsyncs. Throws
// ConfigError naming `path`. Returns the number of pages written.
std::uint64_t write_diff_memory(const GuestMemory& mem, const DirtyBitmaps& dirty, const std::string& path);

// The pages written since the last call, per region, taken (cleared) as they are read:
// with `tracking`, KVM's dirty log (vCPU writes) OR'ed with GuestMemory's (device writes);
// without, every resident page (GuestMemory::resident_bitmap, Firecracker 1.16's mincore
// fallback). Give them back with restore_dirty() when the snapshot fails.
DirtyBitmaps take_dirty(GuestMemory& mem, const VmFd& vm, bool tracking);
// ORs `bitmaps` into GuestMemory's own bitmaps (no-op without tracking).
void restore_dirty(GuestMemory& mem, const DirtyBitmaps& bitmaps, bool tracking) noexcept;

} // namespace ember
