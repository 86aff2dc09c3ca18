// libFuzzer target: the region list `ember uffd-handler` receives from a VMM with its
// userfaultfd (api/uffd_regions.cpp). Input: 4 bytes of memory file size in pages (little
// endian), then the message. Invariants checked: no crash, no sanitizer report, a refusal is a
// ConfigError only, and every accepted list is what the page server relies on: page sizes are
// powers of two, fields are page multiples, every region lies in the file, the sizes add up to
// the file's, and host ranges neither wrap nor overlap.

#include "api/uffd_regions.hpp"
#include "vmm/base/error.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) return 0;
    const std::uint64_t pages = std::uint64_t{data[0]} | std::uint64_t{data[1]} << 8 | std::uint64_t{data[2]} << 16 |
                                std::uint64_t{data[3]} << 24;
    const std::uint64_t file_size = pages * 4096;
    const std::string_view text(reinterpret_cast<const char*>(data + 4), size - 4);
    std::vector<ember::UffdRegion> regions;
    try {
        regions = ember::parse_uffd_regions(text, file_size);
    } catch (const ember::ConfigError&) {
        return 0;
    }
    std::uint64_t total = 0;
    for (const auto& r : regions) {
        if (r.page_size < 4096 || (r.page_size & (r.page_size - 1)) != 0) std::abort();
        if (r.size == 0 || ((r.base | r.size | r.offset) % r.page_size) != 0) std::abort();
        if (r.base + r.size < r.base || r.offset + r.size > file_size || r.offset + r.size < r.offset) std::abort();
        total += r.size;
    }
    if (regions.empty() || total != file_size) std::abort();
    std::sort(regions.begin(), regions.end(), [](const auto& a, const auto& b) { return a.base < b.base; });
    for (std::size_t i = 1; i < regions.size(); ++i)
        if (regions[i - 1].base + regions[i - 1].size > regions[i].base) std::abort();
    return 0;
}
