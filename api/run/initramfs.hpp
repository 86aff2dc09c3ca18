#pragma once
// The initramfs that makes the `ember run` agent PID 1: the static agent (linked into Ember, see
// agent_blob.S.in) as /init, the directories it mounts on, and /dev/console, in the kernel's
// newc cpio format (Documentation/driver-api/early-userspace/buffer-format.rst), uncompressed.

#include <cstdint>
#include <span>
#include <vector>

namespace ember::run {

// The agent binary built with this Ember (guest-kernels/agent/ember_agent.c).
std::span<const std::uint8_t> agent_binary() noexcept;

std::vector<std::uint8_t> agent_initramfs(std::span<const std::uint8_t> agent);

} // namespace ember::run
