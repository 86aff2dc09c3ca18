#include "vmm/base/uffd_server.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/sparse_file.hpp"
#include "vmm/base/userfaultfd.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <poll.h>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

namespace ember {

std::vector<std::pair<std::uint64_t, std::uint64_t>> file_data_extents(int fd, std::uint64_t size) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
    try {
        for (const Extent& e : data_extents(fd, "memory file")) {
            if (e.offset >= size) break;
            out.emplace_back(e.offset, std::min(e.offset + e.length, size));
        }
    } catch (const ConfigError&) {
        return {{0, size}}; // no SEEK_DATA here: treat every byte as data
    }
    return out;
}

UffdPageServer::UffdPageServer(UniqueFd uffd, std::vector<UffdRegion> regions, std::span<const std::byte> file,
                               std::vector<std::pair<std::uint64_t, std::uint64_t>> data)
    : uffd_(std::move(uffd)), regions_(std::move(regions)), file_(file), data_(std::move(data)) {
    std::uint64_t max_page = 0;
    for (const auto& r : regions_) {
        if (r.offset > file_.size() || r.size > file_.size() - r.offset)
            throw ConfigError("uffd region at offset " + std::to_string(r.offset) + " lies past the memory file");
        removed_.emplace_back(static_cast<std::size_t>(r.size / r.page_size), false);
        max_page = std::max(max_page, r.page_size);
    }
    zeros_.resize(static_cast<std::size_t>(max_page));
}

bool UffdPageServer::in_data(std::uint64_t off, std::uint64_t len) const noexcept {
    // First extent that ends after off; data_ is sorted and disjoint.
    auto it = std::upper_bound(data_.begin(), data_.end(), off,
                               [](std::uint64_t o, const auto& e) { return o < e.second; });
    return it != data_.end() && it->first < off + len;
}

bool UffdPageServer::fault(std::uint64_t addr) {
    for (std::size_t i = 0; i < regions_.size(); ++i) {
        const UffdRegion& r = regions_[i];
        if (addr < r.base || addr - r.base >= r.size) continue;
        const std::uint64_t in = (addr - r.base) & ~(r.page_size - 1);
        const std::uint64_t dst = r.base + in, off = r.offset + in;
        const bool zero = removed_[i][static_cast<std::size_t>(in / r.page_size)] || !in_data(off, r.page_size);
        int err;
        if (zero && r.page_size == 4096) err = uffd::zeropage(uffd_.get(), dst, r.page_size);
        else err = uffd::copy(uffd_.get(), dst, zero ? zeros_.data() : file_.data() + off, r.page_size);
        if (err == 0) {
            ++(zero ? stats_.zero : stats_.copied);
            return true;
        }
        if (err == EAGAIN) return false;
        // Another fault on the same page was served first: wake whoever still waits on it.
        if (err == EEXIST) {
            (void)uffd::wake(uffd_.get(), dst, r.page_size);
            return true;
        }
        if (err == ESRCH) {
            gone_ = true;
            return true;
        }
        throw SystemError(zero ? "UFFDIO_ZEROPAGE" : "UFFDIO_COPY", err);
    }
    char hex[32];
    std::snprintf(hex, sizeof hex, "0x%llx", static_cast<unsigned long long>(addr));
    throw ConfigError(std::string("page fault at ") + hex + " outside every region the VMM described");
}

void UffdPageServer::remove(std::uint64_t start, std::uint64_t end) {
    for (std::size_t i = 0; i < regions_.size(); ++i) {
        const UffdRegion& r = regions_[i];
        const std::uint64_t lo = std::max(start, r.base), hi = std::min(end, r.base + r.size);
        if (lo >= hi) continue;
        // Whole pages only: madvise(MADV_DONTNEED) ranges are page-aligned.
        for (std::uint64_t p = (lo - r.base) / r.page_size; p < (hi - r.base + r.page_size - 1) / r.page_size; ++p) {
            removed_[i][static_cast<std::size_t>(p)] = true;
            ++stats_.removed;
        }
    }
}

bool UffdPageServer::poll_once() {
    // Every pending event first: while a REMOVE is unread, UFFDIO_COPY and UFFDIO_ZEROPAGE fail
    // with EAGAIN (Firecracker's on_demand_handler reads them all for the same reason).
    for (int rounds = 0; rounds < 1000 && !gone_; ++rounds) {
        std::vector<uffd_msg> msgs;
        if (const int err = uffd::read_msgs(uffd_.get(), msgs); err != 0) throw SystemError("read userfaultfd", err);
        std::vector<std::uint64_t> faults;
        faults.swap(deferred_);
        for (const auto& m : msgs) {
            if (m.event == UFFD_EVENT_PAGEFAULT) faults.push_back(m.arg.pagefault.address);
            else if (m.event == UFFD_EVENT_REMOVE) remove(m.arg.remove.start, m.arg.remove.end);
        }
        for (std::uint64_t a : faults)
            if (!fault(a)) deferred_.push_back(a);
        if (deferred_.empty()) break;
    }
    return !gone_;
}

void UffdPageServer::serve(int peer_fd) {
    for (;;) {
        pollfd fds[2] = {{uffd_.get(), POLLIN, 0}, {peer_fd, POLLIN, 0}};
        const int n = ::poll(fds, 2, deferred_.empty() ? -1 : 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno("poll");
        }
        if (!poll_once()) return;
        if (fds[1].revents & (POLLHUP | POLLERR)) return;
        if (fds[1].revents & POLLIN) {
            // The VMM sends nothing after the handshake: readable means end of stream.
            char b[64];
            const ssize_t r = ::recv(peer_fd, b, sizeof b, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) return;
        }
    }
}

} // namespace ember
