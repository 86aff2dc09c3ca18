#include "vmm/base/unique_fd.hpp"

#include "vmm/base/error.hpp"

#include <cstring>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

namespace ember {

SystemError::SystemError(const std::string& what, int err)
    : std::runtime_error(what + ": " + std::strerror(err)), err_(err) {}

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
}

UniqueFd::~UniqueFd() { reset(); }

void UniqueFd::reset(int fd) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
}

UniqueFd UniqueFd::open(const std::string& path, int flags, const char* what) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) throw_errno(std::string(what) + " " + path);
    return UniqueFd(fd);
}

Mapping& Mapping::operator=(Mapping&& o) noexcept {
    if (this != &o) {
        reset();
        addr_ = std::exchange(o.addr_, nullptr);
        len_ = std::exchange(o.len_, 0);
    }
    return *this;
}

Mapping::~Mapping() { reset(); }

void Mapping::reset() noexcept {
    if (addr_ != nullptr) ::munmap(addr_, len_);
    addr_ = nullptr;
    len_ = 0;
}

Mapping Mapping::map(std::size_t len, int prot, int flags, int fd, long offset, const char* what) {
    void* p = ::mmap(nullptr, len, prot, flags, fd, offset);
    if (p == MAP_FAILED) throw_errno(std::string("mmap ") + what);
    return Mapping(p, len);
}

EventFd::EventFd() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (!fd_.valid()) throw_errno("eventfd");
}

bool EventFd::signal() const noexcept {
    std::uint64_t one = 1;
    for (;;) {
        ssize_t n = ::write(fd_.get(), &one, sizeof one);
        if (n == static_cast<ssize_t>(sizeof one)) return true;
        if (n < 0 && errno == EINTR) continue;
        return false;
    }
}

std::uint64_t EventFd::drain() const noexcept {
    std::uint64_t v = 0;
    for (;;) {
        ssize_t n = ::read(fd_.get(), &v, sizeof v);
        if (n == static_cast<ssize_t>(sizeof v)) return v;
        if (n < 0 && errno == EINTR) continue;
        return 0;
    }
}

} // namespace ember
