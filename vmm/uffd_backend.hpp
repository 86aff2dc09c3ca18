#pragma once
// Firecracker's Uffd memory backend for PUT /snapshot/load (vmm/src/persist.rs
// guest_memory_from_uffd, send_uffd_handshake): guest RAM is anonymous and untouched; a
// userfaultfd registered over it goes to the page-fault handler listening on backend_path,
// with the region list, in one message. The handler then fills each page on first access.

#include "vmm/base/guest_memory.hpp"
#include "vmm/base/unique_fd.hpp"

#include <string>

namespace ember {

// Both ends stay open for the VM's life: closing the socket could race the handler's read of
// the handshake (Firecracker forgets it for that reason), and while Ember holds the uffd a
// handler that dies leaves faults hanging instead of silently mapping zero pages.
struct UffdBackend {
    UniqueFd uffd;
    UniqueFd socket;
};

// The handshake's JSON: one object per region, in order, with Firecracker 1.16's field order
// (GuestRegionUffdMapping: base_host_virt_addr, size, offset, page_size, and the deprecated
// page_size_kib, which holds bytes as well).
std::string uffd_regions_json(const GuestMemory& mem, std::uint64_t page_size);

// Creates the userfaultfd (UFFD_FEATURE_EVENT_REMOVE, so balloon-removed pages reach the
// handler), registers every region for MISSING faults, connects to `path` and sends the region
// list with the uffd attached. Throws ConfigError with Firecracker's GuestMemoryFromUffdError
// text.
UffdBackend connect_uffd_backend(const GuestMemory& mem, const std::string& path);

} // namespace ember
