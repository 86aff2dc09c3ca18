#pragma once
// Helpers shared by the unit tests: in-memory files (memfd) and little-endian byte buffers.

#include "vmm/base/error.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

// `expr` throws ember::ConfigError whose message contains `text` (expr is evaluated twice).
#define CHECK_CONFIG_ERROR(expr, text)                  \
    do {                                                \
        CHECK_THROWS_AS(expr, ::ember::ConfigError);    \
        CHECK_THROWS_WITH(expr, Catch::Contains(text)); \
    } while (0)

namespace ember::test {

// An anonymous in-memory file holding `bytes`, to hand to loaders that take (fd, size).
class MemFile {
public:
    explicit MemFile(std::span<const std::uint8_t> bytes) : fd_(::memfd_create("ember-unit-test", MFD_CLOEXEC)) {
        REQUIRE(fd_ >= 0);
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
            REQUIRE(n > 0);
            done += static_cast<std::size_t>(n);
        }
        size_ = bytes.size();
    }
    explicit MemFile(const std::vector<std::uint8_t>& bytes) : MemFile(std::span<const std::uint8_t>(bytes)) {}
    MemFile(const MemFile&) = delete;
    MemFile& operator=(const MemFile&) = delete;
    ~MemFile() {
        if (fd_ >= 0) ::close(fd_);
    }
    int fd() const noexcept { return fd_; }
    std::uint64_t size() const noexcept { return size_; }

private:
    int fd_;
    std::uint64_t size_ = 0;
};

// Stores `v` little-endian at `off`, growing the buffer as needed.
template <class T>
void put(std::vector<std::uint8_t>& b, std::size_t off, T v) {
    if (b.size() < off + sizeof v) b.resize(off + sizeof v, 0);
    std::memcpy(b.data() + off, &v, sizeof v);
}

template <class T>
T get(std::span<const std::uint8_t> b, std::size_t off) {
    REQUIRE(off + sizeof(T) <= b.size());
    T v{};
    std::memcpy(&v, b.data() + off, sizeof v);
    return v;
}
template <class T>
T get(const std::vector<std::uint8_t>& b, std::size_t off) {
    return get<T>(std::span<const std::uint8_t>(b), off);
}

// A private directory under /tmp, removed with the files and FIFOs made through it.
class TempDir {
public:
    TempDir() {
        char name[] = "/tmp/ember-unit-XXXXXX";
        REQUIRE(::mkdtemp(name) != nullptr);
        path_ = name;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        for (const auto& f : files_) ::unlink(f.c_str());
        ::rmdir(path_.c_str());
    }
    // A path inside the directory, removed with it.
    std::string file(const std::string& name) {
        files_.push_back(path_ + "/" + name);
        return files_.back();
    }
    // A named pipe inside the directory, removed with it.
    std::string fifo(const std::string& name) {
        std::string p = file(name);
        REQUIRE(::mkfifo(p.c_str(), 0600) == 0);
        return p;
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    std::vector<std::string> files_;
};

} // namespace ember::test
