#pragma once
// Split virtqueue, device side (virtio 1.2 §2.7). The driver owns the descriptor table and the
// available ring, so everything read from them is hostile input: every index is bounded, every
// chain walk has a hop limit, every buffer is resolved through GuestMemory::slice().
//
// Threading: a Queue is used under its device's lock, by the transport (configuration) and the
// device's event-loop handlers (pop/add_used). Ring memory is shared with the guest's vCPUs, so
// ring indexes are read and written with the barriers of §2.7.13 / §2.7.7.
//
// Dirty pages (GuestMemory dirty tracking). The rule every device follows: a guest page is
// marked when the device obtains the means to write it, which is never after the write.
//   - Device-writable buffers are resolved by pop() with GuestMemory::writable(), which marks
//     every page of the buffer. Devices write guest buffers only through the `host` of a
//     device-writable Descriptor (or through GuestMemory::write()), never through a readable one.
//     The marks are a superset of what is written: a buffer returned short, unused (BadChain,
//     a refused request, undo_pop) or failed by the disk is marked all the same.
//   - Device-readable buffers, the descriptor table and the available ring are resolved with
//     slice() and never marked: reading guest memory dirties nothing.
//   - add_used() and enable_notification() mark the used-ring bytes they store (the element,
//     used.idx, avail_event), right after storing them.
// A page marked at pop() may be written later (block I/O in flight), so a bitmap is exact for a
// device only when taken with the device quiesced (nothing in flight), as a snapshot is.

#include "vmm/base/guest_addr.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ember {
class GuestMemory;
}

namespace ember::virtio {

// One resolved buffer of a chain: guest address, length, direction and where its bytes live
// in this process (valid for as long as guest memory is mapped). `host` of a device-writable
// buffer came from GuestMemory::writable() (its pages are marked); of a readable one, from
// slice(): read only.
struct Descriptor {
    GuestAddr addr;
    std::uint32_t len = 0;
    bool device_writable = false;
    std::byte* host = nullptr;
};

// Everything a snapshot needs to bring a queue back: what the driver programmed and how far
// the device got. Plain values only; the host pointers of a live queue are derived from them
// (activate(), restore()).
struct QueueState {
    std::uint16_t max_size = 0;
    std::uint16_t size = 0;
    bool ready = false;
    GuestAddr desc_addr;
    GuestAddr avail_addr;
    GuestAddr used_addr;
    std::uint16_t next_avail = 0; // available-ring index of the next chain to take
    std::uint16_t next_used = 0;  // used-ring index of the next element (= the published used.idx)
    std::uint16_t signalled_used = 0;
    bool signalled_used_valid = false;
    bool event_idx = false;
    bool indirect = false;
    bool active = false; // activated (rings checked and served) at DRIVER_OK
    bool operator==(const QueueState&) const = default;
};

// vring_need_event() of §2.7.7.2: true when the driver's used_event index lies in [old, new_idx),
// i.e. the device just moved used.idx past it, computed modulo 2^16.
constexpr bool need_event(std::uint16_t event, std::uint16_t new_idx, std::uint16_t old) noexcept {
    return static_cast<std::uint16_t>(new_idx - event - 1) < static_cast<std::uint16_t>(new_idx - old);
}

class Queue {
public:
    explicit Queue(std::uint16_t max_size);

    enum class PopStatus {
        Empty,    // nothing new in the available ring
        Chain,    // a well-formed chain: head and descs are valid
        BadChain, // the chain at `head` is malformed: return it with add_used(head, 0)
        Broken,   // the driver broke the ring protocol: the device needs a reset
    };
    struct PopResult {
        PopStatus status = PopStatus::Empty;
        std::uint16_t head = 0;
        std::span<const Descriptor> descs; // valid until the next pop()
        const char* error = nullptr;       // why, for BadChain and Broken
    };

    const QueueState& state() const noexcept { return s_; }
    std::uint16_t max_size() const noexcept { return s_.max_size; }
    bool ready() const noexcept { return s_.ready; }
    bool active() const noexcept { return mem_ != nullptr; }

    // Replaces this queue's state with a saved one (snapshot restore). A queue saved active is
    // activated again from its guest addresses with activate()'s checks, and its indices are
    // checked against the rings in `mem`: at most `size` chains available past next_avail (what
    // pop() would call Broken), at most `size` taken and not returned, and used.idx equal to
    // next_used. An inactive queue must have consumed nothing. Throws ConfigError saying what
    // does not fit (the queue is then reset); never reads or writes outside guest RAM.
    void restore(const QueueState& s, const GuestMemory& mem);

    // Driver-side configuration (MMIO QueueNum/QueueReady/Queue{Desc,Driver,Device}). Ignored
    // while the queue is ready, as §4.2.3.2 forbids changing a live queue.
    void set_size(std::uint16_t n) noexcept;
    void set_ready(bool r) noexcept;
    void set_desc_addr(std::uint64_t a, bool high) noexcept;
    void set_avail_addr(std::uint64_t a, bool high) noexcept;
    void set_used_addr(std::uint64_t a, bool high) noexcept;

    // At DRIVER_OK: checks size (power of two, ≤ max), alignment (§2.7 table: 16/2/4) and that
    // every ring lies inside guest RAM, then starts serving. Returns an empty string on success,
    // else why the queue is unusable (the queue stays inactive).
    std::string activate(const GuestMemory& mem, bool event_idx, bool indirect) noexcept;
    // Back to the power-on state (§2.4): forgets the rings and every index.
    void reset() noexcept;

    // The next available chain, walked with head < size, next < table length, at most `size`
    // descriptors in all (§2.7.5.3.1) and indirect tables not nested (§2.7.5.3.1).
    PopResult pop() noexcept;
    // Chains taken but not yet returned.
    std::uint16_t pending() const noexcept;
    // Gives back the last `n` chains taken by pop() (a device that could not use them yet, e.g.
    // virtio-net with too few receive buffers for a frame); they are popped again later.
    void undo_pop(std::uint16_t n) noexcept;
    // Puts (head, len) into the used ring and, with `publish`, publishes used.idx (release
    // ordering). Several elements that the driver must see together (a mergeable receive
    // buffer, §5.1.6.4) are added with publish = false and then published by the last one.
    void add_used(std::uint16_t head, std::uint32_t len, bool publish = true) noexcept;
    // Whether the driver wants an interrupt for what was added since the last call (event-idx
    // window or VIRTQ_AVAIL_F_NO_INTERRUPT). Call after a batch of add_used().
    bool needs_interrupt() noexcept;
    // With EVENT_IDX, asks for a notification once the driver adds past what was consumed;
    // returns true if chains arrived meanwhile (the caller then pops again).
    bool enable_notification() noexcept { return enable_notification(s_.next_avail); }
    // The same for a device that saw the chains up to available index `seen` and gave them back
    // because they were too few (undo_pop): asks for a notification once the driver adds past
    // `seen`, and returns true only if it already has, so a retry always has new chains.
    bool enable_notification(std::uint16_t seen) noexcept;

private:
    std::uint16_t avail_idx() const noexcept;
    std::byte* avail_ = nullptr;
    std::byte* used_ = nullptr;
    std::byte* desc_ = nullptr;
    const GuestMemory* mem_ = nullptr;
    QueueState s_;
    std::vector<Descriptor> scratch_;
};

} // namespace ember::virtio
