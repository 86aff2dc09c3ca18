#include "vmm/drives.hpp"

#include "devices/virtio/block/cow.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"
#include "vmm/device_manager.hpp"
#include "vmm/arch/x86_64/layout.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <linux/fs.h>
#include <set>
#include <sys/ioctl.h>
#include <sys/stat.h>

namespace ember {
namespace {

// Whether the guest's writes reach the drive's file (a copy-on-write drive writes its overlay).
bool writes_file(const DriveConfig& c) noexcept { return !c.is_read_only && !c.cow; }

} // namespace

OpenedDrive open_drive(const DriveConfig& cfg) {
    const std::string what = "drive " + cfg.drive_id + ": " + cfg.path_on_host;
    const int flags = (cfg.is_read_only || cfg.cow ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    int fd = ::open(cfg.path_on_host.c_str(), flags);
    if (fd < 0) throw ConfigError(what + ": " + std::strerror(errno));
    OpenedDrive d{cfg, UniqueFd(fd), 0, 0, 0};
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw ConfigError(what + ": " + std::strerror(errno));
    if (S_ISREG(st.st_mode)) {
        d.size = static_cast<std::uint64_t>(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) throw ConfigError(what + ": BLKGETSIZE64: " + std::strerror(errno));
        d.size = bytes;
    } else {
        throw ConfigError(what + " is not a regular file or block device");
    }
    // As Firecracker's DiskProperties (devices/virtio/block/virtio/device.rs): an empty image is
    // a disk of 0 sectors (its docs/api_requests/patch-block.md attaches one to PATCH in later);
    // a size that is not whole sectors is a warning, and the guest sees the whole sectors only.
    if (d.size % 512 != 0)
        LOG_WARN("%s: disk size %llu is not a multiple of sector size 512; the remainder will not be visible to the guest.",
                 what.c_str(), static_cast<unsigned long long>(d.size));
    d.dev = st.st_dev;
    d.ino = st.st_ino;
    if (cfg.cow && (cfg.cow->base_dev() != d.dev || cfg.cow->base_ino() != d.ino || cfg.cow->size() != d.size))
        throw ConfigError(what + ": its copy-on-write layer is over another file (" + cfg.cow->base_path() + ")");
    return d;
}

std::vector<OpenedDrive> open_drives(const std::vector<DriveConfig>& drives) {
    std::set<std::string> ids;
    std::size_t roots = 0;
    for (const auto& d : drives) {
        if (!ids.insert(d.drive_id).second) throw ConfigError("drive id \"" + d.drive_id + "\" is used twice");
        roots += d.is_root_device;
    }
    if (roots > 1) throw ConfigError("only one drive can be the root device");
    if (drives.size() > max_virtio_devices())
        throw ConfigError("at most " + std::to_string(max_virtio_devices()) + " virtio devices fit the IRQ range");
    std::vector<OpenedDrive> out;
    for (const auto& d : drives)
        if (d.is_root_device) out.push_back(open_drive(d));
    for (const auto& d : drives)
        if (!d.is_root_device) out.push_back(open_drive(d));
    for (std::size_t i = 0; i < out.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (out[i].dev == out[j].dev && out[i].ino == out[j].ino && (writes_file(out[i].cfg) || writes_file(out[j].cfg)))
                throw ConfigError("drives " + out[j].cfg.drive_id + " and " + out[i].cfg.drive_id +
                                  " are the same file, and at least one is writable");
    return out;
}

std::string root_args(const std::vector<OpenedDrive>& drives) {
    for (const auto& d : drives) {
        if (!d.cfg.is_root_device) continue;
        std::string s = d.cfg.partuuid ? "root=PARTUUID=" + *d.cfg.partuuid : std::string("root=/dev/vda");
        return s + (d.cfg.is_read_only ? " ro" : " rw");
    }
    return {};
}

std::string add_kernel_args(const std::string& cmdline, const std::string& args) {
    if (args.empty()) return cmdline;
    const auto sep = cmdline == "--" || cmdline.rfind("-- ", 0) == 0 ? 0 : cmdline.find(" -- ");
    if (sep == std::string::npos) {
        if (cmdline.size() >= 3 && cmdline.compare(cmdline.size() - 3, 3, " --") == 0)
            return cmdline.substr(0, cmdline.size() - 3) + " " + args + " --";
        return cmdline.empty() ? args : cmdline + " " + args;
    }
    if (sep == 0) return args + " " + cmdline;
    return cmdline.substr(0, sep) + " " + args + cmdline.substr(sep);
}

} // namespace ember
