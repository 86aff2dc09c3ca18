#pragma once
// Driver side of a split virtqueue for the virtio unit tests: lays out the descriptor table,
// available ring and used ring by hand in a fake guest memory, as a guest driver would.

#include "devices/virtio/queue.hpp"
#include "devices/virtio/spec.hpp"
#include "vmm/base/guest_memory.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <utility>

namespace ember::test {

inline constexpr std::uint64_t kRamBytes = std::uint64_t{1} << 20;
// Fixed ring addresses, large enough for queues of up to 256 entries.
inline constexpr std::uint64_t kDescAddr = 0x1000;  // 16 * 256 = 0x1000 bytes
inline constexpr std::uint64_t kAvailAddr = 0x3000; // 6 + 2 * 256 bytes
inline constexpr std::uint64_t kUsedAddr = 0x4000;  // 6 + 8 * 256 bytes
inline constexpr std::uint64_t kDataAddr = 0x10000; // buffers from here on

inline GuestMemory make_test_ram() { return GuestMemory::with_regions({{GuestAddr(0), kRamBytes}}); }

struct RawDesc {
    std::uint64_t addr;
    std::uint32_t len;
    std::uint16_t flags;
    std::uint16_t next;
};
static_assert(sizeof(RawDesc) == 16);

// The guest driver's view of one queue at (desc, avail, used) in `mem`.
class DriverRings {
public:
    DriverRings(const GuestMemory& mem, std::uint16_t size, std::uint64_t desc = kDescAddr, std::uint64_t avail = kAvailAddr,
                std::uint64_t used = kUsedAddr)
        : mem_(&mem), size_(size), desc_(desc), avail_(avail), used_(used) {}

    std::uint16_t size() const noexcept { return size_; }
    std::uint64_t desc_addr() const noexcept { return desc_; }
    std::uint64_t avail_addr() const noexcept { return avail_; }
    std::uint64_t used_addr() const noexcept { return used_; }

    // Programs `q` with this layout and marks it ready (not activated).
    void program(virtio::Queue& q) const {
        q.set_size(size_);
        q.set_desc_addr(desc_ & 0xffffffffULL, false);
        q.set_desc_addr(desc_ >> 32, true);
        q.set_avail_addr(avail_ & 0xffffffffULL, false);
        q.set_avail_addr(avail_ >> 32, true);
        q.set_used_addr(used_ & 0xffffffffULL, false);
        q.set_used_addr(used_ >> 32, true);
        q.set_ready(true);
    }

    // Writes descriptor `i` of the table at `table` (the queue's own table by default).
    void set_desc(std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags = 0, std::uint16_t next = 0) const {
        set_desc_at(desc_, i, addr, len, flags, next);
    }
    void set_desc_at(std::uint64_t table, std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags = 0,
                     std::uint16_t next = 0) const {
        REQUIRE(mem_->write_obj(GuestAddr(table + 16 * std::uint64_t{i}), RawDesc{addr, len, flags, next}));
    }

    // Puts `head` into the next available slot and publishes avail.idx.
    void publish(std::uint16_t head) {
        w16(avail_ + 4 + 2 * std::uint64_t{static_cast<std::uint16_t>(avail_idx_ % size_)}, head);
        ++avail_idx_;
        w16(avail_ + 2, avail_idx_);
    }
    // Writes a ring slot without publishing.
    void set_avail_slot(std::uint16_t slot, std::uint16_t head) const { w16(avail_ + 4 + 2 * std::uint64_t{slot}, head); }
    void set_avail_idx(std::uint16_t idx) {
        avail_idx_ = idx;
        w16(avail_ + 2, idx);
    }
    std::uint16_t avail_idx() const noexcept { return avail_idx_; }
    void set_avail_flags(std::uint16_t f) const { w16(avail_, f); }
    void set_used_event(std::uint16_t v) const { w16(avail_ + 4 + 2 * std::uint64_t{size_}, v); }

    std::uint16_t used_idx() const { return r16(used_ + 2); }
    std::uint16_t used_flags() const { return r16(used_); }
    std::uint16_t avail_event() const { return r16(used_ + 4 + 8 * std::uint64_t{size_}); }
    void set_avail_event(std::uint16_t v) const { w16(used_ + 4 + 8 * std::uint64_t{size_}, v); }
    // (id, len) of used ring slot `slot`.
    std::pair<std::uint32_t, std::uint32_t> used_elem(std::uint16_t slot) const {
        std::uint32_t id = 0, len = 0;
        REQUIRE(mem_->read_obj(GuestAddr(used_ + 4 + 8 * std::uint64_t{slot}), id));
        REQUIRE(mem_->read_obj(GuestAddr(used_ + 8 + 8 * std::uint64_t{slot}), len));
        return {id, len};
    }
    // The used element the device wrote for the n-th completion overall.
    std::pair<std::uint32_t, std::uint32_t> nth_used(std::uint16_t n) const {
        return used_elem(static_cast<std::uint16_t>(n % size_));
    }

    std::byte* host(std::uint64_t addr) const {
        auto s = mem_->slice(GuestAddr(addr), 1);
        REQUIRE(s);
        return s->data();
    }

private:
    void w16(std::uint64_t a, std::uint16_t v) const { REQUIRE(mem_->write_obj(GuestAddr(a), v)); }
    std::uint16_t r16(std::uint64_t a) const {
        std::uint16_t v = 0;
        REQUIRE(mem_->read_obj(GuestAddr(a), v));
        return v;
    }

    const GuestMemory* mem_; // a pointer, so that a rig can be re-pointed at other rings
    std::uint16_t size_;
    std::uint64_t desc_, avail_, used_;
    std::uint16_t avail_idx_ = 0;
};

} // namespace ember::test
