#pragma once
// One file descriptor passed beside a byte message over a Unix stream socket (SCM_RIGHTS,
// unix(7)): how Firecracker hands its userfaultfd and the region list to a page-fault handler.

#include "vmm/base/unique_fd.hpp"

#include <cstddef>
#include <span>

namespace ember {

// One sendmsg(2) of `data` with `fd` attached. Returns the bytes sent (all of them for a message
// that fits the socket buffer); throws SystemError("sendmsg").
std::size_t send_with_fd(int sock, std::span<const std::byte> data, int fd);

struct ReceivedMessage {
    std::size_t len = 0; // bytes stored at the start of the buffer; 0 at end of stream
    UniqueFd fd;         // the attached fd (close-on-exec), or invalid when none came
};
// One recvmsg(2) into `buf`. Every fd beyond the first is closed; throws SystemError("recvmsg").
ReceivedMessage recv_with_fd(int sock, std::span<std::byte> buf);

} // namespace ember
