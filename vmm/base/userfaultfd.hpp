#pragma once
// userfaultfd(2) for lazily restored guest memory (Firecracker's Uffd memory backend,
// docs/snapshotting/handling-page-faults-on-snapshot-resume.md): the VMM registers its
// anonymous guest RAM for MISSING faults and hands the fd to a page-fault handler process,
// which fills each page on first touch with UFFDIO_COPY or UFFDIO_ZEROPAGE.

#include "vmm/base/unique_fd.hpp"

#include <cstdint>
#include <linux/userfaultfd.h>
#include <vector>

namespace ember::uffd {

// A new userfaultfd, O_CLOEXEC | O_NONBLOCK, able to take faults raised inside the kernel (KVM's
// get_user_pages for guest accesses), so without UFFD_USER_MODE_ONLY: the userfaultfd(2) syscall
// needs CAP_SYS_PTRACE (or vm.unprivileged_userfaultfd=1); when it is refused, /dev/userfaultfd's
// USERFAULTFD_IOC_NEW is tried. Throws SystemError naming the syscall's errno.
UniqueFd open_userfaultfd();

// UFFDIO_API handshake asking for `features` (UFFD_FEATURE_*); throws SystemError on failure
// and ConfigError when the kernel lacks one of them.
void api(int uffd, std::uint64_t features);

// UFFDIO_REGISTER [addr, addr + len) with UFFDIO_REGISTER_MODE_MISSING; throws SystemError, or
// ConfigError if the range does not support UFFDIO_COPY and UFFDIO_ZEROPAGE.
void register_missing(int uffd, void* addr, std::uint64_t len);

// UFFDIO_COPY of `len` bytes from `src` to the registered `dst` (page-aligned), waking the
// faulting threads. 0, or the errno: EEXIST (already mapped), EAGAIN (the mappings are changing:
// read the pending events and retry), ESRCH (the faulting process is gone), ...
int copy(int uffd, std::uint64_t dst, const void* src, std::uint64_t len) noexcept;
// UFFDIO_ZEROPAGE of [dst, dst + len); errno as copy().
int zeropage(int uffd, std::uint64_t dst, std::uint64_t len) noexcept;
// UFFDIO_WAKE for [dst, dst + len); 0 or errno.
int wake(int uffd, std::uint64_t dst, std::uint64_t len) noexcept;

// Appends every uffd_msg that can be read now (the fd is non-blocking). 0 (also when there was
// none) or read's errno.
int read_msgs(int uffd, std::vector<uffd_msg>& out) noexcept;

} // namespace ember::uffd
