#pragma once
// The balloon device as configured (Firecracker's BalloonDeviceConfig, PUT /balloon and the
// config file's "balloon" section; vmm_config/balloon.rs): plain values, independent of JSON.

#include <cstdint>

namespace ember {

struct BalloonConfig {
    std::uint32_t amount_mib = 0;               // target size; amount_mib * 256 pages fits u32
    bool deflate_on_oom = false;                // offers VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    std::uint16_t stats_polling_interval_s = 0; // > 0 offers VIRTIO_BALLOON_F_STATS_VQ
    bool free_page_hinting = false;             // offers VIRTIO_BALLOON_F_FREE_PAGE_HINT
    bool free_page_reporting = false;           // offers VIRTIO_BALLOON_F_REPORTING
    bool operator==(const BalloonConfig&) const = default;
};

} // namespace ember
