#include "api/run/passt.hpp"

#include "vmm/base/error.hpp"

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

extern char** environ;

namespace ember::run {

namespace {
constexpr const char* kGuest = "10.0.2.15", *kPrefix = "24", *kGateway = "10.0.2.2", *kDns = "10.0.2.3";
constexpr int kChildFd = 3;
} // namespace

Passt::Passt(const std::string& log_path, bool verbose) : log_path_(log_path) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("--net: socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    const char* env_bin = std::getenv("EMBER_PASST");
    const std::string bin = env_bin && *env_bin ? env_bin : "passt";
    const std::string fd_arg = std::to_string(kChildFd);
    // No -D: passt then reads the host's resolv.conf, and forwards what the guest sends to kDns
    // to the first resolver there.
    // Not -d: passt 0.0~git20230309 (bookworm) crashes in a debug message on the first IPv6 TCP
    // connection.
    std::vector<std::string> args = {bin, "-f", "-1", "-F", fd_arg, "-a", kGuest, "-n", kPrefix, "-g", kGateway, "--dns-forward", kDns};
    if (!verbose) args.insert(args.begin() + 1, "-q");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
    // dup2 onto itself clears FD_CLOEXEC (POSIX; glibc >= 2.29).
    posix_spawn_file_actions_adddup2(&fa, theirs.get(), kChildFd);
    const int rc = ::posix_spawnp(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) {
        pid_ = -1;
        if (rc == ENOENT)
            throw ConfigError("--net: " + bin + " was not found: install passt (Debian package passt), or give an existing TAP: --net TAP");
        throw ConfigError("--net: cannot start " + bin + ": " + std::strerror(rc));
    }
    const long pfd = ::syscall(SYS_pidfd_open, pid_, 0);
    if (pfd < 0) {
        const int e = errno;
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
        throw SystemError("--net: pidfd_open", e);
    }
    pidfd_.reset(static_cast<int>(pfd));
    socket_ = std::make_shared<const UniqueFd>(std::move(ours));
}

Passt::~Passt() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
}

std::string Passt::guest_cmdline() {
    return std::string("ember.net=") + kGuest + "/" + kPrefix + "," + kGateway + "," + kDns;
}

std::string Passt::failure() const {
    std::string why = "passt ended";
    siginfo_t si{};
    if (::waitid(P_PID, static_cast<id_t>(pid_), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid_)
        why += si.si_code == CLD_EXITED ? " with status " + std::to_string(si.si_status) : " on signal " + std::to_string(si.si_status);
    // Its last lines that are not about the missing syslog.
    std::ifstream in(log_path_);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);)
        if (!l.empty() && l.find("to syslog") == std::string::npos) lines.push_back(l);
    const std::size_t from = lines.size() > 3 ? lines.size() - 3 : 0;
    for (std::size_t i = from; i < lines.size(); ++i) why += (i == from ? ": " : "; ") + lines[i];
    return why;
}

} // namespace ember::run
