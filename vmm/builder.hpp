#pragma once
// Builds a microVM (Firecracker's builder). This is the boot path: configuration in, a VM ready
// to start out. Everything that can be wrong with the configuration (files, images, TAPs, sizes,
// device counts) is found before /dev/kvm is opened, so every such error is a one-line
// ConfigError even on a host without KVM. The order: check and open the host resources, lay out
// guest memory and load the kernel, attach the devices (which yields their kernel arguments),
// write the boot structures, then open KVM and create the vCPUs.

#include "vmm/snapshot_file.hpp"
#include "vmm/vm.hpp"
#include "vmm/vm_config.hpp"

#include <boost/asio/io_context.hpp>
#include <memory>
#include <string>
#include <variant>

namespace ember {

// Where a loaded snapshot's guest memory comes from (PUT /snapshot/load mem_backend): a memory
// file mapped privately (File), or a page-fault handler listening on a Unix socket (Uffd).
struct FileMemory {
    int fd;
    std::string path;
};
struct UffdMemory {
    std::string socket_path;
};
using SnapshotMemory = std::variant<FileMemory, UffdMemory>;

class VmBuilder {
public:
    // Throws ConfigError (bad configuration, no usable KVM) or SystemError. `io` is the VMM
    // thread's event loop: device I/O, console input and the exit notification run on it.
    static std::unique_ptr<Vm> for_boot(boost::asio::io_context& io, const VmConfig& cfg, const RunOptions& opts,
                                        Vm::ExitHandler on_exit);
    // The from-snapshot path: `cfg` is the configuration the snapshot was taken with (its host
    // resources possibly overridden), `mem_fd` the memory file, mapped MAP_PRIVATE. Host resources
    // are opened as for_boot() opens them, every device is restored from its saved state in the
    // slot it had, and the VM and vCPUs get their KVM state back. Throws ConfigError when the
    // snapshot does not fit the configuration or this host, or SystemError.
    static std::unique_ptr<Vm> from_snapshot(boost::asio::io_context& io, const SnapshotFile& snap, const VmConfig& cfg,
                                             const SnapshotMemory& mem, const RunOptions& opts, Vm::ExitHandler on_exit,
                                             bool clock_realtime = false);

private:
    struct HostResources;
    static HostResources open_host_resources(const VmConfig& cfg);
    // The legacy devices and every virtio device in Ember's fixed slot order (drives with the
    // root first, network interfaces, vsock, the console, entropy): fresh when `snap` is null,
    // else each from its saved state, checked to land in the slot it was saved from.
    static void attach_devices(Vm& vm, boost::asio::io_context& io, const VmConfig& cfg, const RunOptions& opts,
                               HostResources& res, const SnapshotFile* snap);
};

} // namespace ember
