#include "api/run/disk_layer.hpp"

#include "devices/virtio/block/cow.hpp"
#include "vmm/base/file_clone.hpp"

namespace ember::run {

DiskLayer DiskLayer::create(const std::string& image, const std::string& scratch_dir, bool snapshottable) {
    static unsigned counter = 0;
    DiskLayer l;
    l.image_ = image;
    const std::string file = scratch_dir + "/disk" + std::to_string(counter++) + ".img";
    if (try_reflink(image, file)) {
        l.file_ = file;
        l.reflinked_ = true;
    } else if (snapshottable) {
        copy_file_sparse(image, file);
        l.file_ = file;
    } else {
        l.cow_ = std::make_shared<virtio::block::CowDisk>(virtio::block::CowDisk::create(image, scratch_dir));
    }
    return l;
}

void DiskLayer::configure(DriveConfig& d) const {
    d.is_read_only = false;
    if (cow_) {
        d.path_on_host = image_;
        d.cow = cow_;
    } else {
        d.path_on_host = file_;
    }
}

void DiskLayer::export_to(const std::string& out) const {
    if (cow_) {
        cow_->export_to(out);
    } else if (!try_reflink(file_, out)) {
        copy_file_sparse(file_, out);
    }
}

const char* DiskLayer::kind() const noexcept { return cow_ ? "copy-on-write overlay" : reflinked_ ? "reflink" : "copy"; }

} // namespace ember::run
