#include "vmm/base/userfaultfd.hpp"

#include "vmm/base/error.hpp"

#include <cerrno>
#include <fcntl.h>
#include <string>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW
// include/uapi/linux/userfaultfd.h (Linux 6.1): ioctl on /dev/userfaultfd that returns a new fd.
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

namespace ember::uffd {

UniqueFd open_userfaultfd() {
    const int flags = O_CLOEXEC | O_NONBLOCK;
    long fd = ::syscall(SYS_userfaultfd, flags);
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    const int err = errno;
    if (err == EPERM) {
        // /dev/userfaultfd grants kernel-mode faults to whoever may open it (Linux 6.1+).
        UniqueFd dev(::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC));
        if (dev.valid()) {
            int nfd = ::ioctl(dev.get(), USERFAULTFD_IOC_NEW, flags);
            if (nfd >= 0) return UniqueFd(nfd);
        }
    }
    throw SystemError("userfaultfd", err);
}

void api(int uffd, std::uint64_t features) {
    uffdio_api a{};
    a.api = UFFD_API;
    a.features = features;
    if (::ioctl(uffd, UFFDIO_API, &a) != 0) throw_errno("UFFDIO_API");
    if ((a.features & features) != features)
        throw ConfigError("userfaultfd: the kernel lacks features 0x" + std::to_string(features & ~a.features));
}

void register_missing(int uffd, void* addr, std::uint64_t len) {
    uffdio_register r{};
    r.range.start = reinterpret_cast<std::uint64_t>(addr);
    r.range.len = len;
    r.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd, UFFDIO_REGISTER, &r) != 0) throw_errno("UFFDIO_REGISTER");
    const std::uint64_t need = (1ULL << _UFFDIO_COPY) | (1ULL << _UFFDIO_ZEROPAGE);
    if ((r.ioctls & need) != need) throw ConfigError("userfaultfd: the range does not support UFFDIO_COPY and UFFDIO_ZEROPAGE");
}

int copy(int uffd, std::uint64_t dst, const void* src, std::uint64_t len) noexcept {
    uffdio_copy c{};
    c.dst = dst;
    c.src = reinterpret_cast<std::uint64_t>(src);
    c.len = len;
    c.mode = 0;
    if (::ioctl(uffd, UFFDIO_COPY, &c) == 0) return 0;
    return errno;
}

int zeropage(int uffd, std::uint64_t dst, std::uint64_t len) noexcept {
    uffdio_zeropage z{};
    z.range.start = dst;
    z.range.len = len;
    z.mode = 0;
    if (::ioctl(uffd, UFFDIO_ZEROPAGE, &z) == 0) return 0;
    return errno;
}

int wake(int uffd, std::uint64_t dst, std::uint64_t len) noexcept {
    uffdio_range r{};
    r.start = dst;
    r.len = len;
    if (::ioctl(uffd, UFFDIO_WAKE, &r) == 0) return 0;
    return errno;
}

int read_msgs(int uffd, std::vector<uffd_msg>& out) noexcept {
    uffd_msg buf[16];
    for (;;) {
        const ssize_t n = ::read(uffd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno == EAGAIN ? 0 : errno;
        }
        // The kernel returns whole messages only (fs/userfaultfd.c userfaultfd_read).
        const auto count = static_cast<std::size_t>(n) / sizeof(uffd_msg);
        out.insert(out.end(), buf, buf + count);
        if (count < std::size(buf)) return 0;
    }
}

} // namespace ember::uffd
