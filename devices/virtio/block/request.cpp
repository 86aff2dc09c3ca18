#include "devices/virtio/block/request.hpp"

#include <cstring>

namespace ember::virtio::block {

const char* to_string(RequestError e) noexcept {
    switch (e) {
    case RequestError::None: return "none";
    case RequestError::NoHeader: return "missing or short request header";
    case RequestError::NoStatus: return "missing device-writable status descriptor";
    case RequestError::WrongDirection: return "data descriptor in the wrong direction";
    case RequestError::NotSectorMultiple: return "data length is not a multiple of 512";
    case RequestError::ZeroLength: return "read or write without data";
    case RequestError::OutOfRange: return "sector range beyond the disk";
    case RequestError::TooManySegments: return "more data segments than seg_max";
    case RequestError::ReadOnly: return "write to a read-only drive";
    case RequestError::Unsupported: return "unsupported request type";
    }
    return "?";
}

std::uint8_t ParseResult::status_value() const noexcept {
    if (error == RequestError::None) return S_OK;
    return error == RequestError::Unsupported ? S_UNSUPP : S_IOERR;
}

ParseResult parse_request(std::span<const Descriptor> chain, const DiskGeometry& disk) noexcept {
    ParseResult r;
    // The status byte first: with it, every later error can at least be reported to the driver.
    const bool has_status = chain.size() >= 2 && chain.back().device_writable && chain.back().len > 0;
    if (has_status) r.status = chain.back().addr + (chain.back().len - 1); // inside the buffer: no wrap
    const Descriptor* hdr = chain.empty() ? nullptr : &chain.front();
    if (!hdr || hdr->device_writable || hdr->len < 16) {
        r.error = RequestError::NoHeader;
        return r;
    }
    if (!has_status) {
        r.error = RequestError::NoStatus;
        return r;
    }
    std::uint32_t type;
    std::uint64_t sector;
    std::memcpy(&type, hdr->host, 4);
    std::memcpy(&sector, hdr->host + 8, 8);

    Request& q = r.request;
    q.sector = sector;
    q.data = chain.subspan(1, chain.size() - 2);
    std::uint64_t total = 0;
    for (const auto& d : q.data) total += d.len; // ≤ 2^15 descriptors × 2^32: no overflow
    q.data_len = total;

    switch (type) {
    case static_cast<std::uint32_t>(RequestType::In):
    case static_cast<std::uint32_t>(RequestType::Out): {
        const bool in = type == static_cast<std::uint32_t>(RequestType::In);
        q.type = in ? RequestType::In : RequestType::Out;
        if (!in && disk.read_only) { r.error = RequestError::ReadOnly; return r; }
        for (const auto& d : q.data)
            if (d.device_writable != in) { r.error = RequestError::WrongDirection; return r; }
        if (q.data.size() > disk.seg_max) { r.error = RequestError::TooManySegments; return r; }
        if (total == 0) { r.error = RequestError::ZeroLength; return r; }
        if (total % SECTOR_SIZE != 0) { r.error = RequestError::NotSectorMultiple; return r; }
        const std::uint64_t sectors = total / SECTOR_SIZE;
        if (sector > disk.capacity_sectors || sectors > disk.capacity_sectors - sector) {
            r.error = RequestError::OutOfRange;
            return r;
        }
        return r;
    }
    case static_cast<std::uint32_t>(RequestType::Flush):
        q.type = RequestType::Flush;
        q.data_len = 0; // §5.2.6.1: a flush carries no data; any buffers are ignored
        q.data = {};
        return r;
    case static_cast<std::uint32_t>(RequestType::GetId):
        q.type = RequestType::GetId;
        for (const auto& d : q.data)
            if (!d.device_writable) { r.error = RequestError::WrongDirection; return r; }
        if (total == 0) { r.error = RequestError::ZeroLength; return r; }
        return r;
    default:
        r.error = RequestError::Unsupported;
        return r;
    }
}

} // namespace ember::virtio::block
