#include "api/run/initramfs.hpp"

#include <cstdio>
#include <string>

extern "C" {
extern const std::uint8_t ember_agent_start[];
extern const std::uint8_t ember_agent_end[];
}

namespace ember::run {
namespace {

void pad4(std::vector<std::uint8_t>& out) {
    while (out.size() % 4 != 0) out.push_back(0);
}

// One newc entry: "070701", then 13 fields of 8 hex digits (ino, mode, uid, gid, nlink, mtime,
// filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), the NUL-terminated name
// padded to 4 bytes, the data padded to 4 bytes.
void entry(std::vector<std::uint8_t>& out, unsigned ino, const std::string& name, unsigned mode,
           std::span<const std::uint8_t> data = {}, unsigned rmajor = 0, unsigned rminor = 0) {
    const unsigned long fields[13] = {ino, mode, 0, 0, 1, 0, data.size(), 0, 0, rmajor, rminor, name.size() + 1, 0};
    char hex[16];
    for (char c : std::string("070701")) out.push_back(static_cast<std::uint8_t>(c));
    for (unsigned long f : fields) {
        std::snprintf(hex, sizeof hex, "%08lX", f);
        out.insert(out.end(), hex, hex + 8);
    }
    out.insert(out.end(), name.begin(), name.end());
    out.push_back(0);
    pad4(out);
    out.insert(out.end(), data.begin(), data.end());
    pad4(out);
}

} // namespace

std::span<const std::uint8_t> agent_binary() noexcept {
    return {ember_agent_start, static_cast<std::size_t>(ember_agent_end - ember_agent_start)};
}

std::vector<std::uint8_t> agent_initramfs(std::span<const std::uint8_t> agent) {
    std::vector<std::uint8_t> out;
    out.reserve(agent.size() + 4096);
    unsigned ino = 1;
    for (const char* d : {"dev", "proc", "sys", "tmp", "run", "newroot"}) entry(out, ino++, d, 0040755);
    entry(out, ino++, "dev/console", 0020600, {}, 5, 1);
    entry(out, ino++, "init", 0100755, agent);
    entry(out, ino++, "TRAILER!!!", 0);
    return out;
}

} // namespace ember::run
