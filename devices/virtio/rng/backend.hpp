#pragma once
// The host side of virtio-rng: where the random bytes come from. The device uses the host
// kernel's CSPRNG through getrandom(2) (Firecracker uses aws-lc-rs's rand::fill, which draws
// from the same source); tests substitute sources that fail or count.

#include <cstddef>
#include <memory>
#include <span>

namespace ember::virtio::rng {

class EntropySource {
public:
    virtual ~EntropySource() = default;
    // Fills all of `buf` without blocking. Returns 0, or an errno value when the host could not
    // (then `buf` holds no promise: the device reports nothing of it to the guest).
    virtual int fill(std::span<std::byte> buf) noexcept = 0;
};

// getrandom(buf, len, GRND_NONBLOCK), repeated over short returns and EINTR. Never blocks: a
// host whose pool is not initialised yet fails with EAGAIN instead (device paths never block).
class HostRandom final : public EntropySource {
public:
    int fill(std::span<std::byte> buf) noexcept override;
};

std::unique_ptr<EntropySource> host_random();

} // namespace ember::virtio::rng
