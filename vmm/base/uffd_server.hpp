#pragma once
// The page logic of a userfaultfd page-fault handler for a Firecracker-style memory file
// (`ember uffd-handler`; Firecracker's examples/uffd/on_demand_handler.rs does the same job):
// every MISSING fault in a registered region is served with the page of the memory file at
// the region's offset, UFFDIO_ZEROPAGE for holes in the file and for pages the VMM gave back
// (UFFD_EVENT_REMOVE: balloon madvise(MADV_DONTNEED), after which the guest must read zeros).

#include "vmm/base/unique_fd.hpp"

#include <cstdint>
#include <linux/userfaultfd.h>
#include <span>
#include <utility>
#include <vector>

namespace ember {

// One guest memory region as the VMM describes it: host address in the VMM, length, offset in
// the memory file, page size. Checked by whoever parses the VMM's message: base, size and
// offset are multiples of page_size (a power of two), ranges neither wrap nor overlap.
struct UffdRegion {
    std::uint64_t base = 0;
    std::uint64_t size = 0;
    std::uint64_t offset = 0;
    std::uint64_t page_size = 4096;
};

// [start, end) byte ranges of `fd` that hold data (lseek SEEK_DATA/SEEK_HOLE); everything else
// of its first `size` bytes reads as zeros. The whole file when the filesystem cannot say.
std::vector<std::pair<std::uint64_t, std::uint64_t>> file_data_extents(int fd, std::uint64_t size);

class UffdPageServer {
public:
    struct Stats {
        std::uint64_t copied = 0;  // pages filled from the file
        std::uint64_t zero = 0;    // pages filled with zeros (holes, removed pages)
        std::uint64_t removed = 0; // pages the VMM reported removed
    };

    // `file` is the memory file's bytes (a read-only mapping the caller keeps alive), `data` its
    // extents that hold data. Regions must lie inside `file`.
    UffdPageServer(UniqueFd uffd, std::vector<UffdRegion> regions, std::span<const std::byte> file,
                   std::vector<std::pair<std::uint64_t, std::uint64_t>> data);

    // Serves faults until `peer_fd` (the VMM's socket) hangs up or reads end of stream, or the
    // faulting process is gone. Throws ConfigError for a fault outside every region and
    // SystemError for an ioctl that fails otherwise: a fault left unserved would hang the VMM.
    void serve(int peer_fd);
    // Handles what is pending on the uffd now, without waiting. False once the faulting
    // process is gone (ESRCH).
    bool poll_once();

    const Stats& stats() const noexcept { return stats_; }

private:
    // false: retry after the pending events (EAGAIN).
    bool fault(std::uint64_t addr);
    void remove(std::uint64_t start, std::uint64_t end);
    bool in_data(std::uint64_t off, std::uint64_t len) const noexcept;

    UniqueFd uffd_;
    std::vector<UffdRegion> regions_;
    std::span<const std::byte> file_;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> data_;
    std::vector<std::vector<bool>> removed_; // per region, per page
    std::vector<std::uint64_t> deferred_;    // fault addresses that met EAGAIN
    std::vector<std::byte> zeros_;           // one page of zeros, for page sizes ZEROPAGE cannot fill
    bool gone_ = false;
    Stats stats_;
};

} // namespace ember
