#pragma once
// Owner of an io_uring instance (liburing), in the style of UniqueFd and Mapping. Not movable:
// the kernel's rings are mapped at addresses recorded inside io_uring, so it stays put (hold it
// by unique_ptr to move ownership).

#include <liburing.h>

namespace ember {

class Ring {
public:
    // io_uring_queue_init with `entries` submission slots; throws SystemError naming `what`.
    Ring(unsigned entries, const char* what);
    // Makes every later construction fail with errno `err` as if the kernel refused
    // io_uring_setup (0 restores normal setup). The environment variable
    // EMBER_IO_URING_SETUP_ERRNO=<errno> does the same for a whole process, so a test can run
    // the binary as under a container seccomp profile that blocks io_uring (EPERM, ENOSYS).
    static void fail_setup_for_testing(int err) noexcept;
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    ~Ring();

    io_uring* get() noexcept { return &ring_; }

private:
    io_uring ring_{};
};

} // namespace ember
