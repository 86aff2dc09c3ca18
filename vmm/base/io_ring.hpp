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
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    ~Ring();

    io_uring* get() noexcept { return &ring_; }

private:
    io_uring ring_{};
};

} // namespace ember
