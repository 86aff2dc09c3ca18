#include "vmm/base/bus.hpp"

#include <algorithm>
#include <stdexcept>

namespace ember {

void Bus::insert(std::uint64_t base, std::uint64_t len, std::shared_ptr<BusDevice> dev, std::string dev_name) {
    if (len == 0) throw std::invalid_argument(name_ + " bus: " + dev_name + " has zero length");
    if (len - 1 > UINT64_MAX - base) throw std::invalid_argument(name_ + " bus: " + dev_name + " wraps around");
    const std::uint64_t last = base + (len - 1);
    auto next = ranges_.lower_bound(base);
    if (next != ranges_.end() && next->first <= last)
        throw std::invalid_argument(name_ + " bus: " + dev_name + " overlaps " + next->second.name);
    if (next != ranges_.begin()) {
        auto prev = std::prev(next);
        if (prev->first + (prev->second.len - 1) >= base)
            throw std::invalid_argument(name_ + " bus: " + dev_name + " overlaps " + prev->second.name);
    }
    ranges_.emplace(base, Entry{len, std::move(dev), std::move(dev_name)});
}

const Bus::Entry* Bus::find(std::uint64_t addr, std::size_t len, std::uint64_t& base) const noexcept {
    auto it = ranges_.upper_bound(addr);
    if (it == ranges_.begin() || len == 0) return nullptr;
    --it;
    const std::uint64_t off = addr - it->first;
    if (off >= it->second.len || len > it->second.len - off) return nullptr;
    base = it->first;
    return &it->second;
}

bool Bus::read(std::uint64_t addr, std::span<std::uint8_t> data) noexcept {
    std::uint64_t base = 0;
    if (const Entry* e = find(addr, data.size(), base)) {
        e->dev->read(addr - base, data);
        return true;
    }
    std::fill(data.begin(), data.end(), std::uint8_t{0xff});
    unclaimed_reads_.fetch_add(1, std::memory_order_relaxed);
    return false;
}

bool Bus::write(std::uint64_t addr, std::span<const std::uint8_t> data) noexcept {
    std::uint64_t base = 0;
    if (const Entry* e = find(addr, data.size(), base)) {
        e->dev->write(addr - base, data);
        return true;
    }
    unclaimed_writes_.fetch_add(1, std::memory_order_relaxed);
    return false;
}

} // namespace ember
