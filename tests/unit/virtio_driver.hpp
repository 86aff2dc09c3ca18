#pragma once
// A guest driver for any VirtioDevice without a transport (for the snapshot and dirty-page
// tests): status and feature negotiation (§3.1.1), queues programmed through DriverRings,
// chains laid out in page-aligned buffers, notifications served as the MMIO transport serves
// them. Its driver-side state can be carried over to a copy of guest memory and a restored
// device, so that two instances can be fed the same inputs.

#include "devices/virtio/device.hpp"
#include "devices/virtio/spec.hpp"
#include "virtio_rings.hpp"
#include "vmm/base/guest_memory.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <unistd.h>
#include <vector>

namespace ember::test {

inline constexpr std::uint32_t kRunning =
    virtio::status::ACKNOWLEDGE | virtio::status::DRIVER | virtio::status::FEATURES_OK | virtio::status::DRIVER_OK;

// A second guest memory holding the same bytes (what a snapshot's memory file gives back).
inline GuestMemory clone_ram(const GuestMemory& mem) {
    GuestMemory copy = make_test_ram();
    REQUIRE(copy.total_size() == mem.total_size());
    std::memcpy(copy.regions().front().host, mem.regions().front().host, static_cast<std::size_t>(mem.total_size()));
    return copy;
}
inline bool same_ram(const GuestMemory& a, const GuestMemory& b) {
    return std::memcmp(a.regions().front().host, b.regions().front().host, static_cast<std::size_t>(a.total_size())) == 0;
}
// Page numbers set in region 0's dirty bitmap (taken, so cleared).
inline std::set<std::uint64_t> dirty_pages(GuestMemory& mem) {
    std::set<std::uint64_t> pages;
    const std::vector<std::uint64_t> words = mem.take_dirty_bitmap(0);
    for (std::size_t w = 0; w < words.size(); ++w)
        for (unsigned b = 0; b < 64; ++b)
            if (words[w] & (std::uint64_t{1} << b)) pages.insert(64 * w + b);
    return pages;
}
inline std::uint64_t page_of(std::uint64_t addr) { return addr / GuestMemory::PAGE_SIZE; }

struct Seg {
    std::uint32_t len = 0;
    bool writable = false;
    std::vector<std::uint8_t> bytes; // initial contents (at most len)
};
inline Seg readable(std::vector<std::uint8_t> b) {
    const auto n = static_cast<std::uint32_t>(b.size());
    return Seg{n, false, std::move(b)};
}
inline Seg readable(const std::string& s) { return readable(std::vector<std::uint8_t>(s.begin(), s.end())); }
inline Seg writable(std::uint32_t len) { return Seg{len, true, {}}; }

struct Chain {
    std::uint16_t head = 0;
    std::vector<std::uint64_t> addrs; // one per segment
};

class VirtioDriver {
public:
    // `layouts`: (size, desc, avail, used) of each queue.
    struct Layout {
        std::uint16_t size;
        std::uint64_t desc, avail, used;
    };
    VirtioDriver(GuestMemory& mem, virtio::VirtioDevice& dev, const std::vector<Layout>& layouts) : mem_(&mem), dev_(&dev) {
        for (const auto& l : layouts) rings_.emplace_back(mem, l.size, l.desc, l.avail, l.used);
        next_desc_.assign(layouts.size(), 0);
    }

    // The same driver on `mem` (a copy of this one's memory) and `dev` (restored from this one's).
    VirtioDriver moved_to(GuestMemory& mem, virtio::VirtioDevice& dev) const {
        VirtioDriver d = *this;
        d.mem_ = &mem;
        d.dev_ = &dev;
        for (auto& r : d.rings_) {
            const std::uint16_t idx = r.avail_idx();
            r = DriverRings(mem, r.size(), r.desc_addr(), r.avail_addr(), r.used_addr());
            r.set_avail_idx(idx);
        }
        return d;
    }

    void bring_up(std::uint64_t drop = 0) {
        using namespace virtio;
        REQUIRE(dev_->write_status(status::ACKNOWLEDGE));
        REQUIRE(dev_->write_status(status::ACKNOWLEDGE | status::DRIVER));
        const std::uint64_t f = dev_->offered_features() & ~drop;
        REQUIRE(dev_->write_driver_features(0, static_cast<std::uint32_t>(f)));
        REQUIRE(dev_->write_driver_features(1, static_cast<std::uint32_t>(f >> 32)));
        REQUIRE(dev_->write_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK));
        for (std::size_t q = 0; q < rings_.size(); ++q) rings_[q].program(dev_->queues()[q]);
        REQUIRE(dev_->write_status(kRunning));
        REQUIRE(dev_->running());
        drain_notifications(); // DRIVER_OK notifies every active queue
    }

    std::uint64_t alloc(std::uint64_t len) {
        const std::uint64_t a = next_buf_;
        next_buf_ += (std::max<std::uint64_t>(len, 1) + GuestMemory::PAGE_SIZE - 1) & ~(GuestMemory::PAGE_SIZE - 1);
        REQUIRE(next_buf_ <= kRamBytes);
        return a;
    }

    // Lays `segs` out as one chain of queue `q` and publishes it.
    Chain post(std::size_t q, const std::vector<Seg>& segs) {
        DriverRings& r = rings_[q];
        Chain c;
        std::vector<std::uint16_t> idx;
        for (std::size_t i = 0; i < segs.size(); ++i) idx.push_back(static_cast<std::uint16_t>(next_desc_[q]++ % r.size()));
        for (std::size_t i = 0; i < segs.size(); ++i) {
            const std::uint64_t a = alloc(segs[i].len);
            if (!segs[i].bytes.empty()) REQUIRE(mem_->write(GuestAddr(a), std::as_bytes(std::span(segs[i].bytes))));
            c.addrs.push_back(a);
            const bool last = i + 1 == segs.size();
            const auto flags = static_cast<std::uint16_t>((segs[i].writable ? virtio::desc_flag::WRITE : 0) | (last ? 0 : virtio::desc_flag::NEXT));
            r.set_desc(idx[i], a, segs[i].len, flags, last ? std::uint16_t{0} : idx[i + 1]);
        }
        c.head = idx.front();
        r.publish(c.head);
        return c;
    }

    // A notification of queue `q` as the transport serves it.
    void notify(std::size_t q) {
        std::lock_guard lk(dev_->mutex());
        if (dev_->running() && dev_->queues()[q].active()) dev_->process_queue(q);
    }
    // Serves what is waiting on the device's notification eventfds; returns the queues served.
    std::vector<std::size_t> serve_notifications() {
        std::vector<std::size_t> served;
        for (std::size_t q = 0; q < rings_.size(); ++q) {
            if (!take(dev_->notify_fd(q))) continue;
            served.push_back(q);
            notify(q);
        }
        return served;
    }
    void drain_notifications() {
        for (std::size_t q = 0; q < rings_.size(); ++q) (void)take(dev_->notify_fd(q));
    }
    // Whether the interrupt line was raised since the last call.
    bool irq_raised() { return take(dev_->irq_fd()); }

    virtio::DeviceState state() {
        std::lock_guard lk(dev_->mutex());
        return dev_->save_virtio();
    }

    DriverRings& rings(std::size_t q) { return rings_[q]; }
    std::vector<std::uint8_t> guest(std::uint64_t addr, std::size_t len) const {
        std::vector<std::uint8_t> out(len);
        REQUIRE(mem_->read(GuestAddr(addr), std::as_writable_bytes(std::span(out))));
        return out;
    }

private:
    static bool take(int fd) {
        // The device's eventfds are non-blocking (EventFd): a read takes the count or fails.
        std::uint64_t v = 0;
        return ::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v);
    }

    GuestMemory* mem_;
    virtio::VirtioDevice* dev_;
    std::vector<DriverRings> rings_;
    std::vector<unsigned> next_desc_;
    std::uint64_t next_buf_ = kDataAddr;
};

} // namespace ember::test
