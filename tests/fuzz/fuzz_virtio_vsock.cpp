// libFuzzer target: virtio-vsock packets (virtio 1.2 §5.10.6) in a 64 KiB fake guest RAM. A split
// virtqueue is walked with Queue::pop() as the device walks its txq and rxq; each chain is
// parsed with parse_tx() (as a tx packet) and, when it is device-writable, sized with
// rx_capacity() and filled with write_rx() (as a rx packet). Each accepted tx packet's header
// also drives a Credit, as a connection would.
//
// Input layout:
//   byte 0  queue size = 1 << (b % 10) (512 exceeds the maximum of 256: activation refused)
//   byte 1  bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bits 2-7 number of available entries published
//   then the initial RAM image (descriptor table at 0, available ring after it, buffers).
//
// Invariants (besides no crash and no sanitizer report): every descriptor's host bytes lie
// inside RAM at the offset of its guest address; an accepted tx packet's payload totals exactly
// header.len <= MAX_PAYLOAD bytes, every piece inside a readable buffer of the chain and past the
// header's bytes; write_rx writes HDR_LEN + payload bytes and the header reads back; a Credit
// never grants more than the peer's buf_alloc.

#include "devices/virtio/queue.hpp"
#include "devices/virtio/vsock/request.hpp"
#include "virtio_fuzz_harness.hpp"

#include <cstdint>
#include <cstring>
#include <vector>

using namespace ember;
using namespace ember::fuzz;
using namespace ember::virtio;
using namespace ember::virtio::vsock;

namespace {

bool inside(const std::byte* p, std::size_t n, const Descriptor& d) {
    return p >= d.host && n <= d.len && static_cast<std::size_t>(p - d.host) <= d.len - n;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 2) return 0;
    const GuestMemory& mem = load_ram(std::span(data + 2, size - 2));
    std::byte* ram = mem.regions().front().host;

    const auto qsize = static_cast<std::uint16_t>(1u << (data[0] % 10));
    const std::uint8_t flags = data[1];
    const std::uint64_t avail = 16 * std::uint64_t{qsize};
    const std::uint64_t used = (avail + 6 + 2 * std::uint64_t{qsize} + 3) & ~std::uint64_t{3};
    Queue q(256);
    q.set_size(qsize);
    q.set_desc_addr(0, false);
    q.set_avail_addr(avail, false);
    q.set_used_addr(used, false);
    q.set_ready(true);
    if (!q.activate(mem, flags & 1, flags & 2).empty()) return 0;
    const auto published = static_cast<std::uint16_t>(flags >> 2);
    check(mem.write_obj(GuestAddr(avail + 2), published));

    Credit credit;
    credit.buf_alloc = 256 * 1024;
    std::vector<std::byte> pattern(MAX_PAYLOAD);
    for (std::size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<std::byte>(i * 13);
    TxPacket pkt;
    for (unsigned n = 0; n <= qsize; ++n) {
        const Queue::PopResult r = q.pop();
        if (r.status == Queue::PopStatus::Empty || r.status == Queue::PopStatus::Broken) break;
        if (r.status == Queue::PopStatus::BadChain) {
            q.add_used(r.head, 0);
            continue;
        }
        for (const Descriptor& d : r.descs) {
            const auto off = static_cast<std::uint64_t>(d.host - ram);
            check(d.host >= ram && off == d.addr.raw() && d.len <= kRam && off <= kRam - d.len);
        }
        std::uint32_t used_len = 0;
        const TxError te = parse_tx(r.descs, pkt);
        if (te == TxError::None) {
            check(pkt.hdr.len <= MAX_PAYLOAD);
            std::size_t total = 0;
            for (const iovec& v : pkt.payload) {
                check(v.iov_len > 0);
                const auto* p = static_cast<const std::byte*>(v.iov_base);
                check(std::any_of(r.descs.begin(), r.descs.end(), [&](const Descriptor& d) { return !d.device_writable && inside(p, v.iov_len, d); }));
                total += v.iov_len;
            }
            check(total == pkt.hdr.len);
            const std::uint32_t before = credit.peer_free();
            (void)before;
            credit.update_peer(pkt.hdr);
            check(credit.peer_free() <= credit.peer_buf_alloc);
            if (credit.may_receive(pkt.hdr.len)) credit.rx_cnt += pkt.hdr.len;
            check(credit.buffered() <= credit.buf_alloc);
            credit.fwd_cnt = credit.rx_cnt;
        } else {
            check(to_string(te)[0] != '?');
        }
        std::uint32_t room = 0;
        const RxError re = rx_capacity(r.descs, room);
        if (re == RxError::None) {
            check(room <= MAX_PAYLOAD);
            const std::uint32_t len = std::min<std::uint32_t>(room, pkt.hdr.len);
            Header h = pkt.hdr;
            used_len = write_rx(r.descs, h, std::span<const std::byte>(pattern.data(), len));
            check(used_len == HDR_LEN + len);
            std::vector<std::byte> back;
            for (const Descriptor& d : r.descs) {
                const std::size_t k = std::min<std::size_t>(d.len, HDR_LEN - back.size());
                back.insert(back.end(), d.host, d.host + k);
                if (back.size() == HDR_LEN) break;
            }
            h.len = len;
            check(back.size() == HDR_LEN && decode(std::span<const std::byte, HDR_LEN>(back.data(), HDR_LEN)) == h);
            credit.tx_cnt += len;
        } else {
            check(room == 0 && to_string(re)[0] != '?');
        }
        q.add_used(r.head, used_len);
    }
    return 0;
}
