#pragma once
// A drive as configured (Firecracker's Drive, PUT /drives/{id}): plain values, independent of JSON.

#include "vmm/base/rate_limiter.hpp"

#include <optional>
#include <string>

namespace ember {

// Firecracker's `cache_type`: Unsafe ignores the guest's flushes (no VIRTIO_BLK_F_FLUSH),
// Writeback offers FLUSH and makes it an fdatasync.
enum class DriveCacheType { Unsafe, Writeback };
// Firecracker's `io_engine`. Ember defaults to Async (io_uring); Firecracker defaults to Sync.
enum class DriveIoEngine { Sync, Async };

struct DriveConfig {
    std::string drive_id;
    std::string path_on_host;
    bool is_root_device = false;
    bool is_read_only = false;
    std::optional<std::string> partuuid;
    DriveCacheType cache_type = DriveCacheType::Unsafe;
    DriveIoEngine io_engine = DriveIoEngine::Async;
    std::optional<RateLimiterConfig> rate_limiter; // only buckets that limit (effective())
};

} // namespace ember
