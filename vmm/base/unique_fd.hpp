#pragma once
// Move-only owners of kernel resources (Seastar's posix.hh style): every fd and mmap in
// Ember is owned by exactly one of these, so no path can leak or double-close one.

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace ember {

class UniqueFd {
public:
    UniqueFd() noexcept = default;
    explicit UniqueFd(int fd) noexcept : fd_(fd) {}
    UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    UniqueFd& operator=(UniqueFd&& o) noexcept;
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    ~UniqueFd();

    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept;

    // open(2) with O_CLOEXEC; throws SystemError naming `what` and the path.
    static UniqueFd open(const std::string& path, int flags, const char* what);

private:
    int fd_ = -1;
};

class Mapping {
public:
    Mapping() noexcept = default;
    Mapping(void* addr, std::size_t len) noexcept : addr_(addr), len_(len) {}
    Mapping(Mapping&& o) noexcept
        : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
    Mapping& operator=(Mapping&& o) noexcept;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();

    void* get() const noexcept { return addr_; }
    std::byte* bytes() const noexcept { return static_cast<std::byte*>(addr_); }
    std::size_t size() const noexcept { return len_; }
    void* release() noexcept { len_ = 0; return std::exchange(addr_, nullptr); }

    // mmap(2) that throws SystemError naming `what`.
    static Mapping map(std::size_t len, int prot, int flags, int fd, long offset, const char* what);

private:
    void reset() noexcept;
    void* addr_ = nullptr;
    std::size_t len_ = 0;
};

// An eventfd(2): the notification primitive between threads, KVM (irqfd/ioeventfd) and io_uring.
class EventFd {
public:
    EventFd();                       // EFD_CLOEXEC | EFD_NONBLOCK; throws on failure
    int fd() const noexcept { return fd_.get(); }
    bool signal() const noexcept;    // adds 1; false only if the counter would overflow
    std::uint64_t drain() const noexcept; // reads and resets the counter (0 if it was 0)

private:
    UniqueFd fd_;
};

} // namespace ember
