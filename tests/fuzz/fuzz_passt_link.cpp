// libFuzzer target: virtio-net's passt link (devices/virtio/net/backend.cpp), the reader of QEMU's
// stream netdev records that passt writes. Input: one selector byte, then the stream. The stream
// is written to the peer end of a socket pair in pieces of ((selector & 63) + 1)^2 * 23 bytes
// (23..95 KiB), and read_frame() is called after each piece until it has nothing more. Checked
// against a model that parses the same bytes: every frame handed out is the next record's
// payload, whole, behind an all-zero virtio-net header; a length outside 14..65550 makes the link
// report EPROTO from then on; nothing is handed out twice or skipped; no sanitizer report.

#include "devices/virtio/net/backend.hpp"
#include "devices/virtio/net/request.hpp"
#include "vmm/base/unique_fd.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using namespace ember::virtio::net;

namespace {

void check(bool ok) {
    if (!ok) std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const std::size_t piece = (std::size_t{data[0] & 63u} + 1) * (std::size_t{data[0] & 63u} + 1) * 23;
    const std::uint8_t* s = data + 1;
    const std::size_t n = size - 1;
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) return 0;
    int big = 1 << 20;
    ::setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    UniqueFd peer(fds[0]);
    auto link = Tap::adopt_stream(UniqueFd(fds[1]), "fuzz");
    static std::vector<std::byte> buf(MAX_FRAME_WITH_HDR);

    std::size_t model = 0; // where the next record starts in s
    bool broken = false;
    std::size_t written = 0;
    while (written < n) {
        const std::size_t len = std::min(piece, n - written);
        const ssize_t w = ::write(peer.get(), s + written, len);
        if (w <= 0) break; // the socket is full (a stream with huge lengths): stop feeding
        written += static_cast<std::size_t>(w);
        for (;;) {
            errno = 0;
            const ssize_t r = link->read_frame(buf);
            if (r < 0) {
                check(errno == EAGAIN || errno == EPROTO);
                if (errno == EPROTO) broken = true;
                // The model agrees: either the next record is not all there, or its length is bad.
                if (!broken && written - model >= 4) {
                    const std::size_t l = std::size_t{s[model]} << 24 | std::size_t{s[model + 1]} << 16 |
                                          std::size_t{s[model + 2]} << 8 | s[model + 3];
                    check(l >= 14 && l <= MAX_FRAME_WITH_HDR - VNET_HDR_LEN && written - model < 4 + l);
                }
                if (broken) {
                    const std::size_t l = std::size_t{s[model]} << 24 | std::size_t{s[model + 1]} << 16 |
                                          std::size_t{s[model + 2]} << 8 | s[model + 3];
                    check(written - model >= 4 && (l < 14 || l > MAX_FRAME_WITH_HDR - VNET_HDR_LEN));
                }
                break;
            }
            check(!broken);
            const auto got = static_cast<std::size_t>(r);
            check(got >= VNET_HDR_LEN + 14 && got <= MAX_FRAME_WITH_HDR);
            for (std::size_t i = 0; i < VNET_HDR_LEN; ++i) check(buf[i] == std::byte{0});
            check(written - model >= 4);
            const std::size_t l = std::size_t{s[model]} << 24 | std::size_t{s[model + 1]} << 16 | std::size_t{s[model + 2]} << 8 | s[model + 3];
            check(got == VNET_HDR_LEN + l && written - model >= 4 + l);
            check(std::memcmp(buf.data() + VNET_HDR_LEN, s + model + 4, l) == 0);
            model += 4 + l;
        }
        if (broken) {
            errno = 0;
            check(link->read_frame(buf) < 0 && errno == EPROTO);
            break;
        }
    }
    return 0;
}
