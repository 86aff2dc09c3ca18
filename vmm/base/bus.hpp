#pragma once
// PIO and MMIO buses: ordered maps of non-overlapping address ranges to devices. Devices are
// inserted while the VM is built (overlap, zero length and wrap-around are rejected then) and
// the map is read-only once vCPUs run, so lookups need no lock.

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>

namespace ember {

// A device on a bus. Called from vCPU threads; must not throw or block on the guest.
// `offset` is relative to the base the device was inserted at.
class BusDevice {
public:
    virtual ~BusDevice() = default;
    virtual void read(std::uint64_t offset, std::span<std::uint8_t> data) noexcept = 0;
    virtual void write(std::uint64_t offset, std::span<const std::uint8_t> data) noexcept = 0;
};

class Bus {
public:
    explicit Bus(std::string name) : name_(std::move(name)) {}
    // Throws std::invalid_argument for an empty, wrapping or overlapping range.
    void insert(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string dev_name);

    // Dispatches an access that lies wholly inside one device's range. Anything else is
    // unclaimed: reads return all-ones, writes are dropped, and both are counted.
    bool read(std::uint64_t addr, std::span<std::uint8_t> data) noexcept;
    bool write(std::uint64_t addr, std::span<const std::uint8_t> data) noexcept;

    std::uint64_t unclaimed_reads() const noexcept { return unclaimed_reads_.load(); }
    std::uint64_t unclaimed_writes() const noexcept { return unclaimed_writes_.load(); }
    const std::string& name() const noexcept { return name_; }

private:
    struct Entry {
        std::uint64_t len;
        std::shared_ptr<BusDevice> dev;
        std::string name;
    };
    const Entry* find(std::uint64_t addr, std::size_t len, std::uint64_t& base) const noexcept;

    std::string name_;
    std::map<std::uint64_t, Entry> ranges_;
    std::atomic<std::uint64_t> unclaimed_reads_{0};
    std::atomic<std::uint64_t> unclaimed_writes_{0};
};

} // namespace ember
