#pragma once
// The region list a Firecracker-compatible VMM sends a page-fault handler with its userfaultfd
// (persist.rs GuestRegionUffdMapping, serialized as a JSON array): parsed and checked here,
// since the bytes come from another process.

#include "vmm/base/uffd_server.hpp"

#include <cstdint>
#include <string_view>
#include <vector>

namespace ember {

// Each element: {"base_host_virt_addr", "size", "offset", "page_size"} (unsigned integers; the
// deprecated "page_size_kib", which holds bytes too, is used when page_size is absent). Throws
// ConfigError unless the page size is a power of two of at least 4096, every field is a multiple
// of it, sizes are non-zero, host ranges neither wrap nor overlap, each region lies inside the
// file, and the sizes add up to `file_size` (Firecracker's handlers assert the same).
std::vector<UffdRegion> parse_uffd_regions(std::string_view json, std::uint64_t file_size);

} // namespace ember
