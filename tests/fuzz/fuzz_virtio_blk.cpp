// libFuzzer target: a split virtqueue in a 64 KiB fake guest RAM, served as virtio-blk would
// serve it: Queue::pop() walks the driver's rings, parse_request() parses each chain, the status
// byte (and, for reads and GET_ID, the data buffers) is written, add_used() returns the chain.
//
// Input layout:
//   byte 0     queue size = 1 << (b % 10) (512 exceeds the maximum of 256: activation refused)
//   byte 1     bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 read-only disk, bit 3 misaligned
//              descriptor table, bit 4 rings placed at the very end of RAM
//   bytes 2-3  disk capacity in sectors (little endian); byte 4: seg_max
//   byte 5     length of the driver script that follows (one byte per step)
//   then the script, then the initial RAM image (descriptor table, available ring, buffers).
// Script steps: op & 3 == 0: the device pops and serves one chain; 1: the driver publishes
// (op >> 2) more entries; 2: the driver sets avail.flags / used_event to op >> 2; 3: the driver
// resets the queue and programs it again. After the script, the device serves what is left.
//
// Invariants (besides no crash and no sanitizer report): every descriptor's host bytes lie inside
// the fake RAM at the offset of its guest address, a chain has at most `size` descriptors and
// a head below `size`, accepted requests stay within the disk and seg_max, and used.idx counts
// every chain returned.

#include "devices/virtio/block/request.hpp"
#include "devices/virtio/queue.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/guest_memory.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

using namespace ember;
using namespace ember::virtio;

namespace {

constexpr std::uint64_t kRam = 64 * 1024;

void check(bool ok) {
    if (!ok) std::abort();
}

struct Layout {
    std::uint64_t desc, avail, used;
};

Layout layout_for(std::uint16_t size, std::uint8_t flags) {
    const std::uint64_t n = size;
    Layout l{};
    l.desc = 0;
    l.avail = 16 * n;
    l.used = (l.avail + 6 + 2 * n + 3) & ~std::uint64_t{3};
    const std::uint64_t end = l.used + 6 + 8 * n;
    if ((flags & 0x10) && end <= kRam) {
        const std::uint64_t shift = (kRam - end) & ~std::uint64_t{15};
        l.desc += shift;
        l.avail += shift;
        l.used += shift;
    }
    if (flags & 0x08) l.desc += 8;
    return l;
}

class Harness {
public:
    Harness(const GuestMemory& mem, std::uint16_t size, std::uint8_t flags, block::DiskGeometry disk)
        : mem_(mem), base_(mem.regions().front().host), size_(size), flags_(flags), disk_(disk), q_(256), l_(layout_for(size, flags)) {}

    bool program() {
        q_.reset();
        q_.set_size(size_);
        q_.set_desc_addr(l_.desc, false);
        q_.set_avail_addr(l_.avail, false);
        q_.set_used_addr(l_.used, false);
        q_.set_ready(true);
        const bool ok = q_.activate(mem_, flags_ & 1, flags_ & 2).empty();
        check(ok == q_.active());
        returned_ = 0;
        return ok;
    }

    // One device step; false when the ring is broken (the device would need a reset).
    bool serve_one() {
        const Queue::PopResult r = q_.pop();
        switch (r.status) {
        case Queue::PopStatus::Empty:
            (void)q_.enable_notification();
            return true;
        case Queue::PopStatus::Broken:
            check(r.error != nullptr);
            return false;
        case Queue::PopStatus::BadChain:
            check(r.error != nullptr && r.head < size_);
            give_back(r.head, 0);
            return true;
        case Queue::PopStatus::Chain: break;
        }
        check(r.head < size_);
        check(!r.descs.empty() && r.descs.size() <= size_);
        for (const Descriptor& d : r.descs) check_in_ram(d);

        const block::ParseResult p = block::parse_request(r.descs, disk_);
        std::uint32_t used_len = 0;
        if (p.status) {
            const Descriptor& last = r.descs.back();
            check(last.device_writable && *p.status == last.addr + (last.len - 1));
            used_len = 1;
        }
        if (p.error == block::RequestError::None) {
            const block::Request& q = p.request;
            check(p.status.has_value());
            switch (q.type) {
            case block::RequestType::In:
            case block::RequestType::Out:
                check(q.data_len > 0 && q.data_len % block::SECTOR_SIZE == 0);
                check(q.data.size() == r.descs.size() - 2 && q.data.size() <= disk_.seg_max);
                check(q.sector <= disk_.capacity_sectors && q.data_len / block::SECTOR_SIZE <= disk_.capacity_sectors - q.sector);
                check(q.type == block::RequestType::In || !disk_.read_only);
                for (const Descriptor& d : q.data) {
                    check(d.device_writable == (q.type == block::RequestType::In));
                    if (q.type == block::RequestType::In) touch(d); // the "disk" fills the buffers
                }
                if (q.type == block::RequestType::In) used_len += static_cast<std::uint32_t>(std::min<std::uint64_t>(q.data_len, UINT32_MAX - 1));
                break;
            case block::RequestType::GetId: {
                std::uint32_t written = 0;
                for (const Descriptor& d : q.data) {
                    check(d.device_writable);
                    for (std::uint32_t i = 0; i < d.len && written < block::ID_BYTES; ++i, ++written) d.host[i] = std::byte{'x'};
                }
                used_len += written;
                break;
            }
            case block::RequestType::Flush: check(q.data.empty() && q.data_len == 0); break;
            }
        } else {
            check(p.status_value() == (p.error == block::RequestError::Unsupported ? block::S_UNSUPP : block::S_IOERR));
        }
        if (p.status) check(mem_.write_obj(*p.status, std::byte{p.status_value()}));
        give_back(r.head, used_len);
        return true;
    }

    void publish(unsigned n) {
        std::uint16_t idx = read16(l_.avail + 2);
        idx = static_cast<std::uint16_t>(idx + n);
        write16(l_.avail + 2, idx);
    }
    void set_suppression(std::uint16_t v) {
        write16(l_.avail, v);
        write16(l_.avail + 4 + 2 * std::uint64_t{size_}, v);
    }
    std::uint16_t size() const { return size_; }

private:
    void give_back(std::uint16_t head, std::uint32_t len) {
        q_.add_used(head, len);
        ++returned_;
        check(read16(l_.used + 2) == returned_);
        (void)q_.needs_interrupt();
    }
    void check_in_ram(const Descriptor& d) const {
        check(d.host >= base_);
        const auto off = static_cast<std::uint64_t>(d.host - base_);
        check(off == d.addr.raw() && d.len <= kRam && off <= kRam - d.len);
    }
    void touch(const Descriptor& d) const {
        if (d.len == 0) return;
        d.host[0] = std::byte{0xa5};
        d.host[d.len - 1] = std::byte{0x5a};
    }
    std::uint16_t read16(std::uint64_t a) const {
        std::uint16_t v = 0;
        check(mem_.read_obj(GuestAddr(a), v));
        return v;
    }
    void write16(std::uint64_t a, std::uint16_t v) const { check(mem_.write_obj(GuestAddr(a), v)); }

    const GuestMemory& mem_;
    std::byte* base_;
    std::uint16_t size_;
    std::uint8_t flags_;
    block::DiskGeometry disk_;
    Queue q_;
    Layout l_;
    std::uint16_t returned_ = 0;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 6) return 0;
    static const GuestMemory mem = GuestMemory::with_regions({{GuestAddr(0), kRam}});
    std::byte* ram = mem.regions().front().host;

    const auto qsize = static_cast<std::uint16_t>(1u << (data[0] % 10));
    const std::uint8_t flags = data[1];
    block::DiskGeometry disk;
    disk.capacity_sectors = static_cast<std::uint64_t>(data[2]) | static_cast<std::uint64_t>(data[3]) << 8;
    disk.read_only = (flags & 4) != 0;
    disk.seg_max = data[4];
    const std::size_t script_len = std::min<std::size_t>(data[5], size - 6);
    const std::uint8_t* script = data + 6;
    const std::uint8_t* image = script + script_len;
    const std::size_t image_len = std::min<std::size_t>(size - 6 - script_len, kRam);

    std::memset(ram, 0, kRam);
    if (image_len) std::memcpy(ram, image, image_len);

    Harness h(mem, qsize, flags, disk);
    if (!h.program()) return 0;
    bool broken = false;
    for (std::size_t i = 0; i < script_len; ++i) {
        const std::uint8_t op = script[i];
        switch (op & 3) {
        case 0:
            if (!broken) broken = !h.serve_one();
            break;
        case 1: h.publish(op >> 2); break;
        case 2: h.set_suppression(static_cast<std::uint16_t>(op >> 2)); break;
        case 3:
            if (!h.program()) return 0;
            broken = false;
            break;
        }
    }
    // Then the device drains the ring: at most one ring's worth of chains, plus one pop that
    // must find it empty or broken.
    for (unsigned n = 0; !broken && n <= h.size(); ++n) broken = !h.serve_one();
    return 0;
}
