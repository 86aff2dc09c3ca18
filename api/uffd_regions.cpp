#include "api/uffd_regions.hpp"

#include "vmm/base/error.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>

namespace ember {
namespace {

std::uint64_t field(const nlohmann::json& o, const char* name, std::size_t i) {
    auto it = o.find(name);
    if (it == o.end()) throw ConfigError("region " + std::to_string(i) + ": missing field `" + name + "`");
    if (!it->is_number_unsigned()) throw ConfigError("region " + std::to_string(i) + ": `" + name + "` must be an unsigned integer");
    return it->get<std::uint64_t>();
}

} // namespace

std::vector<UffdRegion> parse_uffd_regions(std::string_view text, std::uint64_t file_size) {
    const nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
    if (j.is_discarded()) throw ConfigError("the VMM's region list is not JSON");
    if (!j.is_array() || j.empty()) throw ConfigError("the VMM's region list must be a non-empty JSON array");
    std::vector<UffdRegion> out;
    std::uint64_t total = 0;
    for (std::size_t i = 0; i < j.size(); ++i) {
        const auto& o = j[i];
        if (!o.is_object()) throw ConfigError("region " + std::to_string(i) + " must be a JSON object");
        UffdRegion r;
        r.base = field(o, "base_host_virt_addr", i);
        r.size = field(o, "size", i);
        r.offset = field(o, "offset", i);
        r.page_size = o.contains("page_size") ? field(o, "page_size", i) : field(o, "page_size_kib", i);
        const std::string at = "region " + std::to_string(i) + ": ";
        if (r.page_size < 4096 || r.page_size > (1ULL << 30) || (r.page_size & (r.page_size - 1)) != 0)
            throw ConfigError(at + "page size " + std::to_string(r.page_size) + " is not a power of two from 4096 to 1 GiB");
        if (r.size == 0) throw ConfigError(at + "size is 0");
        if ((r.base | r.size | r.offset) & (r.page_size - 1)) throw ConfigError(at + "base, size and offset must be multiples of the page size");
        if (r.base + r.size < r.base) throw ConfigError(at + "the host range wraps around");
        if (r.offset > file_size || r.size > file_size - r.offset)
            throw ConfigError(at + "[" + std::to_string(r.offset) + ", +" + std::to_string(r.size) + ") lies past the " +
                              std::to_string(file_size) + "-byte memory file");
        total += r.size; // cannot wrap: each size is at most file_size, and the check below stops at the first excess
        if (total > file_size) break;
        out.push_back(r);
    }
    if (total != file_size)
        throw ConfigError("the regions add up to " + std::to_string(total) + " bytes; the memory file holds " + std::to_string(file_size));
    std::vector<UffdRegion> by_base = out;
    std::sort(by_base.begin(), by_base.end(), [](const UffdRegion& a, const UffdRegion& b) { return a.base < b.base; });
    for (std::size_t i = 1; i < by_base.size(); ++i)
        if (by_base[i - 1].base + by_base[i - 1].size > by_base[i].base) throw ConfigError("the regions' host ranges overlap");
    return out;
}

} // namespace ember
