#pragma once
// passt (Debian package passt), started for one `ember run --net` VM: user-mode networking, no
// TAP and no root. passt gets one end of a socket pair (its -F option) and speaks QEMU's stream
// netdev protocol on it; the VM's virtio-net device takes the other end (NetConfig::passt_socket).
// The guest's view: address 10.0.2.15/24, gateway 10.0.2.2 (passt maps connections to it to the
// host's loopback), DNS 10.0.2.3 (passt forwards queries to the host's resolver). passt runs with
// -1: it ends when the socket closes, so it cannot outlive an Ember that was killed.

#include "vmm/base/unique_fd.hpp"

#include <memory>
#include <string>
#include <sys/types.h>

namespace ember::run {

class Passt {
public:
    // Starts `passt` (EMBER_PASST, else from PATH) with its output in `log_path` (informational
    // messages too when `verbose`). Throws ConfigError when it cannot be started.
    Passt(const std::string& log_path, bool verbose);
    ~Passt(); // SIGTERM, then reaps it
    Passt(const Passt&) = delete;
    Passt& operator=(const Passt&) = delete;

    std::shared_ptr<const UniqueFd> socket() const { return socket_; }
    // Readable once passt has exited.
    int pidfd() const noexcept { return pidfd_.get(); }
    // The agent's network set-up (ember_agent.c, network_up).
    static std::string guest_cmdline();
    // Why passt ended early: its exit status and the last lines of its log.
    std::string failure() const;

private:
    std::string log_path_;
    std::shared_ptr<const UniqueFd> socket_;
    UniqueFd pidfd_;
    pid_t pid_ = -1;
};

} // namespace ember::run
