#include "devices/virtio/queue.hpp"

#include "devices/virtio/spec.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

#include <atomic>
#include <cstring>

namespace ember::virtio {
namespace {

// Ring layout of a split queue of `n` entries (§2.7.6, §2.7.8), including the event fields.
constexpr std::uint64_t desc_bytes(std::uint64_t n) { return 16 * n; }
constexpr std::uint64_t avail_bytes(std::uint64_t n) { return 6 + 2 * n; }
constexpr std::uint64_t used_bytes(std::uint64_t n) { return 6 + 8 * n; }

// Ring fields are naturally aligned (checked at activation), so they can be accessed atomically
// as the guest's driver does.
std::uint16_t load16(const std::byte* p, std::memory_order o) noexcept {
    return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(const_cast<std::byte*>(p))).load(o);
}
void store16(std::byte* p, std::uint16_t v, std::memory_order o) noexcept {
    std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(p)).store(v, o);
}

struct RawDesc {
    std::uint64_t addr;
    std::uint32_t len;
    std::uint16_t flags;
    std::uint16_t next;
};
static_assert(sizeof(RawDesc) == 16);

void set_half(GuestAddr& addr, std::uint64_t a, bool high) noexcept {
    const std::uint64_t v = addr.raw();
    addr = GuestAddr(high ? (v & 0xffffffffULL) | (a << 32) : (v & ~0xffffffffULL) | (a & 0xffffffffULL));
}

} // namespace

Queue::Queue(std::uint16_t max_size) {
    s_.max_size = max_size;
    s_.size = max_size;
    scratch_.reserve(max_size);
}

void Queue::set_size(std::uint16_t n) noexcept {
    if (!s_.ready) s_.size = n;
}
void Queue::set_ready(bool r) noexcept { s_.ready = r; }
void Queue::set_desc_addr(std::uint64_t a, bool high) noexcept {
    if (!s_.ready) set_half(s_.desc_addr, a, high);
}
void Queue::set_avail_addr(std::uint64_t a, bool high) noexcept {
    if (!s_.ready) set_half(s_.avail_addr, a, high);
}
void Queue::set_used_addr(std::uint64_t a, bool high) noexcept {
    if (!s_.ready) set_half(s_.used_addr, a, high);
}

std::string Queue::activate(const GuestMemory& mem, bool event_idx, bool indirect) noexcept {
    const std::uint16_t n = s_.size;
    if (n == 0 || n > s_.max_size || (n & (n - 1)) != 0) return "queue size " + std::to_string(n) + " is not a power of two up to " + std::to_string(s_.max_size);
    if (s_.desc_addr.raw() % 16 != 0) return "descriptor table is not 16-byte aligned";
    if (s_.avail_addr.raw() % 2 != 0) return "available ring is not 2-byte aligned";
    if (s_.used_addr.raw() % 4 != 0) return "used ring is not 4-byte aligned";
    auto d = mem.slice(s_.desc_addr, desc_bytes(n));
    auto a = mem.slice(s_.avail_addr, avail_bytes(n));
    auto u = mem.slice(s_.used_addr, used_bytes(n));
    if (!d) return "descriptor table is outside guest RAM";
    if (!a) return "available ring is outside guest RAM";
    if (!u) return "used ring is outside guest RAM";
    desc_ = d->data();
    avail_ = a->data();
    used_ = u->data();
    mem_ = &mem;
    s_.event_idx = event_idx;
    s_.indirect = indirect;
    s_.active = true;
    return {};
}

void Queue::restore(const QueueState& s, const GuestMemory& mem) {
    if (s.max_size != s_.max_size)
        throw ConfigError("queue of at most " + std::to_string(s.max_size) + " entries restored into one of " + std::to_string(s_.max_size));
    reset();
    if (!s.active) {
        if (s.next_avail != 0 || s.next_used != 0 || s.signalled_used_valid)
            throw ConfigError("inactive queue with chains consumed (next_avail " + std::to_string(s.next_avail) + ", next_used " +
                              std::to_string(s.next_used) + ")");
        s_ = s; // checked by activate() when the driver starts it
        return;
    }
    if (!s.ready) throw ConfigError("active queue that is not ready");
    s_ = s;
    s_.active = false;
    std::string err = activate(mem, s.event_idx, s.indirect);
    if (err.empty()) {
        // Indices against the rings (§2.7.13: avail.idx - next_avail is at most the queue size;
        // used.idx is what the device last published).
        const std::uint16_t ahead = static_cast<std::uint16_t>(avail_idx() - s.next_avail);
        const std::uint16_t used_idx = load16(used_ + 2, std::memory_order_acquire);
        if (ahead > s.size)
            err = "available index " + std::to_string(avail_idx()) + " is more than the queue size past next_avail " + std::to_string(s.next_avail);
        else if (pending() > s.size)
            err = "next_avail " + std::to_string(s.next_avail) + " is more than the queue size past next_used " + std::to_string(s.next_used);
        else if (used_idx != s.next_used)
            err = "used index " + std::to_string(used_idx) + " in guest memory differs from next_used " + std::to_string(s.next_used);
    }
    if (!err.empty()) {
        reset();
        throw ConfigError(err);
    }
}

void Queue::reset() noexcept {
    const std::uint16_t max = s_.max_size;
    s_ = QueueState{};
    s_.max_size = max;
    s_.size = max;
    desc_ = avail_ = used_ = nullptr;
    mem_ = nullptr;
}

std::uint16_t Queue::avail_idx() const noexcept {
    // Acquire: ring entries up to idx are read only after idx (§2.7.13.3: the driver writes the
    // entry, then a barrier, then idx).
    return load16(avail_ + 2, std::memory_order_acquire);
}

std::uint16_t Queue::pending() const noexcept { return static_cast<std::uint16_t>(s_.next_avail - s_.next_used); }

Queue::PopResult Queue::pop() noexcept {
    PopResult r;
    if (!mem_) return r;
    const std::uint16_t size = s_.size;
    const std::uint16_t ahead = static_cast<std::uint16_t>(avail_idx() - s_.next_avail);
    if (ahead == 0) return r;
    if (ahead > size) {
        r.status = PopStatus::Broken;
        r.error = "available index ran more than the queue size ahead";
        return r;
    }
    const std::uint16_t head = load16(avail_ + 4 + 2 * (s_.next_avail % size), std::memory_order_relaxed);
    if (head >= size) {
        r.status = PopStatus::Broken;
        r.error = "available ring holds a head index beyond the queue size";
        return r;
    }
    ++s_.next_avail;
    r.head = head;
    r.status = PopStatus::BadChain;

    scratch_.clear();
    const std::byte* table = desc_;
    std::uint32_t table_len = size;
    std::uint32_t idx = head;
    bool in_indirect = false;
    // Each descriptor read costs one hop; a chain may not be longer than the queue (§2.7.5.3.1),
    // plus one hop for the descriptor that points at an indirect table.
    for (std::uint32_t hops = 0;; ++hops) {
        if (hops > static_cast<std::uint32_t>(size)) {
            r.error = "descriptor chain is longer than the queue (a loop?)";
            return r;
        }
        RawDesc d;
        std::memcpy(&d, table + 16 * static_cast<std::size_t>(idx), sizeof d);
        if (d.flags & desc_flag::INDIRECT) {
            if (!s_.indirect) { r.error = "indirect descriptor without VIRTIO_F_INDIRECT_DESC"; return r; }
            if (in_indirect) { r.error = "indirect descriptor inside an indirect table"; return r; }
            if (d.flags & desc_flag::NEXT) { r.error = "indirect descriptor with NEXT set"; return r; }
            if (d.len == 0 || d.len % 16 != 0) { r.error = "indirect table length is not a non-zero multiple of 16"; return r; }
            if (d.len / 16 > size) { r.error = "indirect table is longer than the queue"; return r; }
            auto t = mem_->slice(GuestAddr(d.addr), d.len);
            if (!t) { r.error = "indirect table is outside guest RAM"; return r; }
            table = t->data();
            table_len = d.len / 16;
            idx = 0;
            in_indirect = true;
            continue;
        }
        // A buffer the device may write is resolved with writable(), which marks its pages (the
        // dirty rule in queue.hpp); a readable one with slice().
        const bool writable = (d.flags & desc_flag::WRITE) != 0;
        auto buf = writable ? mem_->writable(GuestAddr(d.addr), d.len) : mem_->slice(GuestAddr(d.addr), d.len);
        if (!buf) { r.error = "descriptor buffer is outside guest RAM"; return r; }
        scratch_.push_back(Descriptor{GuestAddr(d.addr), d.len, writable, buf->data()});
        if (!(d.flags & desc_flag::NEXT)) break;
        if (d.next >= table_len) { r.error = "next descriptor index is beyond the table"; return r; }
        idx = d.next;
    }
    r.status = PopStatus::Chain;
    r.error = nullptr;
    r.descs = scratch_;
    return r;
}

void Queue::undo_pop(std::uint16_t n) noexcept {
    if (n <= pending()) s_.next_avail = static_cast<std::uint16_t>(s_.next_avail - n);
}

void Queue::add_used(std::uint16_t head, std::uint32_t len, bool publish) noexcept {
    if (!mem_) return;
    const std::size_t off = 4 + 8 * static_cast<std::size_t>(s_.next_used % s_.size);
    std::byte* elem = used_ + off;
    const std::uint32_t id = head;
    std::memcpy(elem, &id, 4);
    std::memcpy(elem + 4, &len, 4);
    mem_->mark_dirty(s_.used_addr + off, 8); // in RAM: checked at activation
    ++s_.next_used;
    // Release: the element is visible before the index that exposes it (§2.7.8.2).
    if (publish) {
        store16(used_ + 2, s_.next_used, std::memory_order_release);
        mem_->mark_dirty(s_.used_addr + 2, 2);
    }
}

bool Queue::needs_interrupt() noexcept {
    if (!mem_) return false;
    // used.idx must be globally visible before the driver's suppression fields are read, or a
    // driver that just re-enabled interrupts could miss this batch (§2.7.7.2, §2.7.10).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (s_.event_idx) {
        const std::uint16_t used_event = load16(avail_ + 4 + 2 * static_cast<std::size_t>(s_.size), std::memory_order_relaxed);
        const std::uint16_t old = s_.signalled_used;
        const bool valid = s_.signalled_used_valid;
        s_.signalled_used = s_.next_used;
        s_.signalled_used_valid = true;
        return !valid || need_event(used_event, s_.next_used, old);
    }
    return (load16(avail_, std::memory_order_relaxed) & AVAIL_F_NO_INTERRUPT) == 0;
}

bool Queue::enable_notification(std::uint16_t seen) noexcept {
    if (!mem_ || !s_.event_idx) return false;
    const std::size_t avail_event = 4 + 8 * static_cast<std::size_t>(s_.size);
    store16(used_ + avail_event, seen, std::memory_order_relaxed);
    mem_->mark_dirty(s_.used_addr + avail_event, 2);
    // The avail_event store must be visible before avail.idx is re-read (§2.7.10).
    std::atomic_thread_fence(std::memory_order_seq_cst);
    return avail_idx() != seen;
}

} // namespace ember::virtio
