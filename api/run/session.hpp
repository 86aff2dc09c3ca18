#pragma once
// The host end of one `ember run` command: listens where the vsock device sends the agent's
// connection (`<uds_path>_<port>`, Firecracker's docs/vsock.md "guest-initiated"), and speaks the
// protocol of api/run/run_proto.h on its own thread (`ember_run`): sends the exec spec, relays
// Ember's stdin within the agent's credit window, writes DATA frames to Ember's stdout/stderr
// before it reads the next frame (so a slow reader stalls the guest command, never loses bytes),
// and forwards signals and terminal sizes. The session ends with the agent's EXIT, or with a
// failure (stream closed early, protocol error); then `on_end` runs on the session thread.

#include "vmm/base/unique_fd.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ember::run {

struct CommandSpec {
    std::vector<std::string> argv;
    std::vector<std::string> env; // "NAME=value"
    std::string cwd;              // empty: "/"
    bool tty = false;
    std::uint16_t rows = 24, cols = 80;
    bool interactive = false; // relay stdin; otherwise the command's stdin ends at once
};

struct Outcome {
    enum class Kind { None, Exited, Signalled, StartFailed, Failed };
    Kind kind = Kind::None;
    std::uint32_t value = 0; // exit code, signal number, or errno (StartFailed)
    std::string text;        // printable ASCII only
};

// Encodes the exec spec as EXEC frames (ERP_F_MORE on all but the last). Throws
// std::invalid_argument when the command breaks a rule of the spec (empty argv[0], an env entry
// without NAME=, more than ERP_MAX_EXEC bytes).
std::vector<std::uint8_t> encode_exec_frames(const CommandSpec& spec);

class Session {
public:
    // Binds and listens on `listen_path`; throws SystemError. The fds stay the caller's.
    Session(std::string listen_path, CommandSpec spec, int in_fd, int out_fd, int err_fd);
    ~Session(); // stops the thread and closes the sockets
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    void start(std::function<void()> on_end);
    // Before start(): at the agent's READY, call on_ready (on the session thread) and send the
    // exec spec only after release() (`--warm` snapshots the VM in between).
    void hold_at_ready(std::function<void()> on_ready) { on_ready_ = std::move(on_ready); }
    void release() noexcept;
    // Thread-safe. false when no agent is connected yet (nothing to deliver the signal to).
    bool send_signal(int sig) noexcept;
    void send_winsize(std::uint16_t rows, std::uint16_t cols) noexcept;
    // Stops relaying; the outcome stays what it was (None if EXIT never came).
    void stop() noexcept;
    Outcome outcome() const;

private:
    void loop() noexcept;
    void finish(Outcome o) noexcept;
    void post_control(const std::uint8_t* frame, std::size_t n) noexcept;
    bool write_out(int fd, const std::uint8_t* p, std::size_t n) noexcept;

    std::string path_;
    CommandSpec spec_;
    int in_fd_, out_fd_, err_fd_;
    UniqueFd listen_fd_, conn_fd_, wake_fd_;
    std::function<void()> on_end_, on_ready_;
    std::condition_variable released_cv_;
    bool released_ = false; // under mu_
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> connected_{false};
    mutable std::mutex mu_;
    std::vector<std::uint8_t> control_; // frames from other threads, under mu_
    Outcome outcome_;                   // under mu_
    bool out_broken_ = false, err_broken_ = false;
};

} // namespace ember::run
