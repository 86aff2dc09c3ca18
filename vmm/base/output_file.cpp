#include "vmm/base/output_file.hpp"

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

namespace ember {

UniqueFd open_output(const std::string& path, mode_t mode) noexcept {
    constexpr int kPipe = O_RDWR | O_NONBLOCK | O_CLOEXEC;
    constexpr int kOther = O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    struct stat st {};
    const bool fifo = ::stat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
    int fd = ::open(path.c_str(), fifo ? kPipe : kOther, mode);
    // A pipe created at `path` between the stat and the open: ENXIO, as it has no reader.
    if (fd < 0 && errno == ENXIO && !fifo) fd = ::open(path.c_str(), kPipe);
    return UniqueFd(fd);
}

ssize_t RecordWriter::write_some(std::string_view bytes) noexcept {
    for (;;) {
        const ssize_t n = ::write(fd_.get(), bytes.data(), bytes.size());
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

bool RecordWriter::write(std::string_view record) {
    if (!tail_.empty()) {
        const ssize_t n = write_some(tail_);
        if (n < 0) tail_.clear(); // the sink failed: the cut record cannot be finished
        else tail_.erase(0, static_cast<std::size_t>(n));
        if (!tail_.empty()) return false;
    }
    const ssize_t n = write_some(record);
    if (n <= 0) return false;
    tail_.assign(record.substr(static_cast<std::size_t>(n)));
    return true;
}

} // namespace ember
