#pragma once
// Builds a microVM (Firecracker's builder). This is the boot path: configuration in, a VM ready
// to start out. Everything that can be wrong with the configuration (files, images, TAPs, sizes,
// device counts) is found before /dev/kvm is opened, so every such error is a one-line
// ConfigError even on a host without KVM. The order: check and open the host resources, lay out
// guest memory and load the kernel, attach the devices (which yields their kernel arguments),
// write the boot structures, then open KVM and create the vCPUs.

#include "vmm/vm.hpp"
#include "vmm/vm_config.hpp"

#include <boost/asio/io_context.hpp>
#include <memory>

namespace ember {

class VmBuilder {
public:
    // Throws ConfigError (bad configuration, no usable KVM) or SystemError. `io` is the VMM
    // thread's event loop: device I/O, console input and the exit notification run on it.
    static std::unique_ptr<Vm> for_boot(boost::asio::io_context& io, const VmConfig& cfg, const RunOptions& opts,
                                        Vm::ExitHandler on_exit);
};

} // namespace ember
