#pragma once
// `ember run`: a throwaway microVM as one command. Boots the kernel with the agent initramfs
// (api/run/initramfs.hpp) over the root image, runs COMMAND through the agent (api/run/session.hpp)
// and exits with its status. Images are never written: each writable disk is a copy-on-write
// layer that is dropped at the end (or written out with --keep-disk).
//
// Exit status: the command's; 128+N when signal N killed it (or ended Ember before the command
// started); 124 when --timeout ended the VM; 126 when the command could not be started, 127 when
// it was not found; 123 when the guest died before the command's status came (kernel panic, the
// agent failed); 125 when Ember itself could not run the VM (bad flags, no kernel, no KVM).

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ember::run {

constexpr int kStatusGuestFailed = 123;
constexpr int kStatusTimeout = 124;
constexpr int kStatusEmberFailed = 125;
constexpr int kStatusCannotExecute = 126;
constexpr int kStatusNotFound = 127;

struct RunArgs {
    std::optional<std::string> kernel, initrd, rootfs;
    std::vector<std::string> drives; // IMG or IMG:ro
    unsigned cpus = 1;
    std::uint64_t mem_mib = 256;
    std::optional<std::string> net; // an existing TAP device, or "": through passt (passt.hpp)
    std::vector<std::string> env;   // VAR=VALUE, or VAR (taken from Ember's environment)
    std::string workdir;
    double timeout_s = 0; // 0: none
    std::optional<std::string> keep_disk;
    bool interactive = false, tty = false;
    // Restore a snapshot of this kernel/image/vCPUs/memory taken at "agent ready" (made by the
    // first --warm run, under $EMBER_CACHE or ~/.cache/ember, in run-warm/<key>/).
    bool warm = false;
    std::vector<std::string> command;
    std::string kvm_path = "/dev/kvm";
};

int run_command(const RunArgs& args);

} // namespace ember::run
