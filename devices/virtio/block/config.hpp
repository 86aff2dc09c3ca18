#pragma once
// A drive as configured (Firecracker's Drive, PUT /drives/{id}): plain values, independent of JSON.

#include "vmm/base/rate_limiter.hpp"

#include <memory>
#include <optional>
#include <string>

namespace ember::virtio::block {
class CowDisk;
}

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
    // Ember's own (`ember run`), not in Firecracker's schema: never set from JSON or the API.
    // When set, the guest's writes go to this copy-on-write layer over the image, and
    // path_on_host (its base) is only opened O_RDONLY; the drive runs on the Sync engine.
    // Such a drive cannot be snapshotted or given another image by PATCH /drives.
    std::shared_ptr<virtio::block::CowDisk> cow = nullptr;
};

} // namespace ember
