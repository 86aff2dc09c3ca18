#include "api/uffd_handler.hpp"

#include "api/uffd_regions.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/scm_rights.hpp"
#include "vmm/base/uffd_server.hpp"
#include "vmm/base/unique_fd.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <poll.h>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <vector>

namespace ember {
namespace {

constexpr const char* USAGE = "usage: ember uffd-handler [--accept-timeout SECONDS] SOCKET MEMFILE\n";

int run(const std::string& sock_path, const std::string& mem_path, int accept_timeout_s) {
    UniqueFd mem = UniqueFd::open(mem_path, O_RDONLY, "memory file");
    struct stat st {};
    if (::fstat(mem.get(), &st) != 0) throw_errno("memory file " + mem_path);
    if (!S_ISREG(st.st_mode) || st.st_size <= 0) throw ConfigError("memory file " + mem_path + " is not a non-empty regular file");
    const auto size = static_cast<std::uint64_t>(st.st_size);
    // Private and read-only: UFFDIO_COPY reads from it; the page cache is shared with other handlers.
    Mapping file = Mapping::map(static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE | MAP_NORESERVE, mem.get(), 0, "mmap memory file");
    auto data = file_data_extents(mem.get(), size);

    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (sock_path.empty() || sock_path.size() >= sizeof addr.sun_path) throw ConfigError("socket path " + sock_path + " is too long");
    std::memcpy(addr.sun_path, sock_path.data(), sock_path.size());
    UniqueFd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener.valid()) throw_errno("socket");
    if (::bind(listener.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) throw_errno("bind " + sock_path);
    if (::listen(listener.get(), 1) != 0) throw_errno("listen " + sock_path);
    std::fprintf(stderr, "uffd-handler: listening on %s for %s (%llu bytes)\n", sock_path.c_str(), mem_path.c_str(),
                 static_cast<unsigned long long>(size));

    // Firecracker's doc: a handler should not wait forever for a VMM that never comes.
    pollfd p{listener.get(), POLLIN, 0};
    int n;
    do n = ::poll(&p, 1, accept_timeout_s * 1000);
    while (n < 0 && errno == EINTR);
    if (n < 0) throw_errno("poll");
    if (n == 0) throw ConfigError("no VMM connected to " + sock_path + " within " + std::to_string(accept_timeout_s) + " s");
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) throw_errno("accept");
    listener.reset();
    ::unlink(sock_path.c_str());
    ucred cred{};
    socklen_t cl = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) throw_errno("SO_PEERCRED");

    // The handshake is one message: the region list with the uffd attached.
    std::vector<std::byte> buf(64 * 1024);
    ReceivedMessage m = recv_with_fd(conn.get(), buf);
    if (m.len == 0) throw ConfigError("the VMM closed the connection before its handshake");
    if (!m.fd.valid()) throw ConfigError("the VMM's handshake carries no userfaultfd");
    const std::string_view text(reinterpret_cast<const char*>(buf.data()), m.len);
    std::vector<UffdRegion> regions = parse_uffd_regions(text, size);
    std::fprintf(stderr, "uffd-handler: VMM pid %d, %zu regions\n", static_cast<int>(cred.pid), regions.size());

    UffdPageServer server(std::move(m.fd), std::move(regions), std::span(file.bytes(), file.size()), std::move(data));
    int status = 0;
    try {
        server.serve(conn.get());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "uffd-handler: %s\n", e.what());
        status = 1;
    }
    const auto& s = server.stats();
    std::fprintf(stderr, "pages_copied=%llu zero=%llu removed=%llu\n", static_cast<unsigned long long>(s.copied),
                 static_cast<unsigned long long>(s.zero), static_cast<unsigned long long>(s.removed));
    return status;
}

} // namespace

int uffd_handler_main(int argc, char** argv) {
    std::vector<std::string> pos;
    int timeout = 60;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::fputs(USAGE, stdout);
            return 0;
        }
        if (a == "--accept-timeout" && i + 1 < argc) {
            try {
                timeout = std::stoi(argv[++i]);
            } catch (const std::exception&) {
                timeout = -1;
            }
            if (timeout <= 0 || timeout > 86400) {
                std::fprintf(stderr, "uffd-handler: --accept-timeout takes 1 to 86400 seconds\n%s", USAGE);
                return 2;
            }
            continue;
        }
        pos.push_back(a);
    }
    if (pos.size() != 2) {
        std::fputs(USAGE, stderr);
        return 2;
    }
    try {
        return run(pos[0], pos[1], timeout);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "uffd-handler: %s\n", e.what());
        return 1;
    }
}

} // namespace ember
