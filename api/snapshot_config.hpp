#pragma once
// Firecracker 1.16's snapshot request bodies (firecracker-api v1.16.1 SnapshotCreateParams and
// SnapshotLoadParams; api_server/request/snapshot.rs for the mem_file_path / mem_backend rules).

#include <memory>
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ember {
namespace virtio::block {
class CowDisk;
}

struct SnapshotCreateParams {
    std::string snapshot_path;
    std::string mem_file_path;
    bool diff = false; // snapshot_type "Diff" (default "Full")
    bool operator==(const SnapshotCreateParams&) const = default;
};

enum class MemBackend { File, Uffd };

struct SnapshotLoadParams {
    std::string snapshot_path;
    MemBackend backend = MemBackend::File;
    std::string backend_path; // mem_backend.backend_path, or the deprecated mem_file_path
    bool mem_file_path_used = false;  // deprecated alias given (Firecracker logs a deprecation)
    bool track_dirty_pages = false;   // or the deprecated enable_diff_snapshots
    bool enable_diff_snapshots_used = false;
    bool resume_vm = false;
    std::vector<std::pair<std::string, std::string>> network_overrides; // iface_id, host_dev_name
    std::optional<std::string> vsock_uds_path;                          // vsock_override.uds_path
    bool clock_realtime = false;
    // Ember-internal (`ember run --warm`, never from the API): drives whose backing replaces the
    // snapshotted drive's (the disk as it was at snapshot time, or an overlay over it).
    struct DriveOverride {
        std::string drive_id, path_on_host;
        std::shared_ptr<virtio::block::CowDisk> cow;
        bool operator==(const DriveOverride&) const = default;
    };
    std::vector<DriveOverride> drive_overrides;
    bool operator==(const SnapshotLoadParams&) const = default;
};

// Throw ConfigError with one line naming the field.
SnapshotCreateParams parse_snapshot_create(const nlohmann::json& j);
SnapshotLoadParams parse_snapshot_load(const nlohmann::json& j);

} // namespace ember
