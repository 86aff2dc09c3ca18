#pragma once
// The throwaway write layer of one `ember run` disk; the image itself is never opened for
// writing. Three kinds, cheapest first:
//   - a reflink (FICLONE) of the image in the run's directory, where that filesystem shares
//     extents: a plain drive, O(1) to make;
//   - a copy-on-write overlay inside Ember (devices/virtio/block/cow.hpp): the image opened
//     read-only, the guest's writes in an unlinked sparse file with a cluster bitmap;
//   - a sparse copy, only when the VM will be snapshotted (`--warm`'s first run): an overlay is
//     Ember-process state that a snapshot file cannot name.

#include "devices/virtio/block/config.hpp"

#include <memory>
#include <string>

namespace ember::virtio::block {
class CowDisk;
}

namespace ember::run {

class DiskLayer {
public:
    // Throws ConfigError/SystemError naming the image.
    static DiskLayer create(const std::string& image, const std::string& scratch_dir, bool snapshottable);
    // Points the drive at the layer.
    void configure(DriveConfig& d) const;
    // --keep-disk (after the VM stopped): writes the disk as the guest left it to `out`, which
    // changes only if the whole copy succeeded.
    void export_to(const std::string& out) const;
    const char* kind() const noexcept;

private:
    std::string image_;
    std::string file_; // the reflink or copy, when there is one
    bool reflinked_ = false;
    std::shared_ptr<virtio::block::CowDisk> cow_;
};

} // namespace ember::run
