#pragma once
// The virtio-mmio transport, modern interface only (virtio 1.2 §4.2.2, Version 2). One 4 KiB
// slot per device. Register accesses arrive on vCPU threads; queue notifications arrive on the
// device's per-queue eventfds (KVM ioeventfd on QueueNotify, datamatch = queue index) and are
// served on the event loop, so a vCPU never runs device work. The one exception is a queue the
// device marks serve_on_vcpu() (bounded, non-blocking work the driver spins on): it has no
// ioeventfd, and its notification is served from the MMIO exit.

#include "devices/virtio/device.hpp"
#include "vmm/base/bus.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <memory>
#include <vector>

namespace ember::virtio {

class MmioTransport final : public BusDevice {
public:
    // Starts watching the device's notification eventfds on `io` (throws SystemError).
    MmioTransport(std::shared_ptr<VirtioDevice> dev, boost::asio::io_context& io);
    ~MmioTransport() override;

    void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept override;

    VirtioDevice& device() noexcept { return *dev_; }
    // Register writes refused by the state machine or malformed accesses (for tests and logs).
    std::uint64_t rejected_writes() const noexcept { return rejected_.load(); }

private:
    std::uint32_t read_register(std::uint64_t offset) noexcept;
    void write_register(std::uint64_t offset, std::uint32_t value) noexcept;
    void watch(std::size_t q);
    void serve_queue(std::size_t q) noexcept;

    std::shared_ptr<VirtioDevice> dev_;
    std::vector<std::unique_ptr<boost::asio::posix::stream_descriptor>> watchers_;
    std::atomic<std::uint64_t> rejected_{0};
};

} // namespace ember::virtio
