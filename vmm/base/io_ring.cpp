#include "vmm/base/io_ring.hpp"

#include "vmm/base/error.hpp"

#include <string>

namespace ember {

Ring::Ring(unsigned entries, const char* what) {
    const int rc = io_uring_queue_init(entries, &ring_, 0);
    if (rc < 0) throw SystemError(std::string(what) + ": io_uring_queue_init", -rc);
}

Ring::~Ring() {
    io_uring_queue_exit(&ring_);
}

} // namespace ember
