#pragma once
// An interrupt line a device raises. Ember's lines are edge-triggered ISA/virtio pins backed by a
// KVM irqfd (an eventfd write injects the edge without a system call into KVM's VM fd).

#include "vmm/base/unique_fd.hpp"

namespace ember {

class IrqLine {
public:
    virtual ~IrqLine() = default;
    virtual void trigger() noexcept = 0;
};

class EventFdIrq final : public IrqLine {
public:
    EventFdIrq() = default;
    void trigger() noexcept override { (void)efd_.signal(); }
    int fd() const noexcept { return efd_.fd(); }

private:
    EventFd efd_;
};

} // namespace ember
