#include "devices/virtio/rng/backend.hpp"

#include <cerrno>
#include <sys/random.h>

namespace ember::virtio::rng {

int HostRandom::fill(std::span<std::byte> buf) noexcept {
    std::size_t done = 0;
    while (done < buf.size()) {
        // getrandom returns at most 32 MiB - 1 per call (random(7)), and may return less after
        // a signal for requests over 256 bytes.
        const ssize_t n = ::getrandom(buf.data() + done, buf.size() - done, GRND_NONBLOCK);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (n == 0) return EIO; // not documented; never loop on it
        done += static_cast<std::size_t>(n);
    }
    return 0;
}

std::unique_ptr<EntropySource> host_random() { return std::make_unique<HostRandom>(); }

} // namespace ember::virtio::rng
