#pragma once
// The throwaway write layer of one `ember run` disk: the image itself is never opened for
// writing. A reflink copy (FICLONE) in the run's directory where the filesystem shares extents;
// otherwise a copy-on-write overlay inside Ember (devices/virtio/block/cow.hpp).

#include "devices/virtio/block/config.hpp"

#include <memory>
#include <string>

namespace ember::run {

class DiskLayer {
public:
    // Throws ConfigError/SystemError with the image's path.
    static DiskLayer create(const std::string& image, const std::string& scratch_dir);
    // Points the drive at the layer.
    void configure(DriveConfig& d) const;
    // --keep-disk: writes the image as the guest left it to `out` (a new file; replaced atomically).
    void export_to(const std::string& out) const;

private:
    std::string image_;
    std::string clone_; // the reflink copy, when there is one
};

} // namespace ember::run
