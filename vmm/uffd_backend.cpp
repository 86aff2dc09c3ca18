#include "vmm/uffd_backend.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/scm_rights.hpp"
#include "vmm/base/userfaultfd.hpp"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <sys/un.h>

namespace ember {
namespace {

// Firecracker's message prefix (persist.rs: LoadSnapshot's GuestMemoryFromUffd) and Rust's
// io::Error display: "<strerror> (os error N)".
[[noreturn]] void fail(const std::string& what, int err) {
    throw ConfigError("Failed to load guest memory: Error creating guest memory from uffd: " + what + ": " +
                      std::strerror(err) + " (os error " + std::to_string(err) + ")");
}

} // namespace

std::string uffd_regions_json(const GuestMemory& mem, std::uint64_t page_size) {
    std::string out = "[";
    for (const auto& r : mem.regions()) {
        if (out.size() > 1) out += ',';
        const std::string ps = std::to_string(page_size);
        out += "{\"base_host_virt_addr\":" + std::to_string(reinterpret_cast<std::uintptr_t>(r.host)) +
               ",\"size\":" + std::to_string(r.range.size()) + ",\"offset\":" + std::to_string(r.offset) +
               ",\"page_size\":" + ps + ",\"page_size_kib\":" + ps + "}";
    }
    return out + "]";
}

UffdBackend connect_uffd_backend(const GuestMemory& mem, const std::string& path) {
    UffdBackend b;
    try {
        b.uffd = uffd::open_userfaultfd();
        // Firecracker enables it unconditionally: a balloon may be restored with the VM.
        uffd::api(b.uffd.get(), UFFD_FEATURE_EVENT_REMOVE);
    } catch (const SystemError& e) {
        fail("Failed to UFFD object", e.code());
    } catch (const ConfigError& e) {
        throw ConfigError(std::string("Failed to load guest memory: Error creating guest memory from uffd: Failed to UFFD object: ") + e.what());
    }
    for (const auto& r : mem.regions()) {
        try {
            uffd::register_missing(b.uffd.get(), r.host, r.range.size());
        } catch (const SystemError& e) {
            fail("Failed to register memory address range with the userfaultfd object", e.code());
        } catch (const ConfigError& e) {
            throw ConfigError(std::string("Failed to load guest memory: Error creating guest memory from uffd: Failed to register memory address range with the userfaultfd object: ") + e.what());
        }
    }
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty() || path.size() >= sizeof addr.sun_path) fail("Failed to connect to UDS Unix stream", ENAMETOOLONG);
    std::memcpy(addr.sun_path, path.data(), path.size());
    b.socket.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!b.socket.valid()) fail("Failed to connect to UDS Unix stream", errno);
    int rc;
    do rc = ::connect(b.socket.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) fail("Failed to connect to UDS Unix stream", errno);
    const std::string json = uffd_regions_json(mem, GuestMemory::PAGE_SIZE);
    try {
        const std::size_t n = send_with_fd(b.socket.get(), std::as_bytes(std::span(json.data(), json.size())), b.uffd.get());
        if (n != json.size()) fail("Failed to sends file descriptor", EMSGSIZE);
    } catch (const SystemError& e) {
        fail("Failed to sends file descriptor", e.code()); // sic: Firecracker's wording
    }
    return b;
}

} // namespace ember
