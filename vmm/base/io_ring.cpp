#include "vmm/base/io_ring.hpp"

#include "vmm/base/error.hpp"

#include <atomic>
#include <cstdlib>
#include <string>

namespace ember {
namespace {

std::atomic<int> forced_setup_errno{0};

// The errno a test asked io_uring setup to fail with, or 0.
int forced_failure() noexcept {
    if (const int e = forced_setup_errno.load(std::memory_order_relaxed)) return e;
    const char* env = std::getenv("EMBER_IO_URING_SETUP_ERRNO");
    if (!env || !*env) return 0;
    char* end = nullptr;
    const long e = std::strtol(env, &end, 10);
    return *end == '\0' && e > 0 && e < 4096 ? static_cast<int>(e) : 0;
}

} // namespace

void Ring::fail_setup_for_testing(int err) noexcept { forced_setup_errno.store(err, std::memory_order_relaxed); }

Ring::Ring(unsigned entries, const char* what) {
    if (const int e = forced_failure()) throw SystemError(std::string(what) + ": io_uring_queue_init", e);
    const int rc = io_uring_queue_init(entries, &ring_, 0);
    if (rc < 0) throw SystemError(std::string(what) + ": io_uring_queue_init", -rc);
}

Ring::~Ring() {
    io_uring_queue_exit(&ring_);
}

} // namespace ember
