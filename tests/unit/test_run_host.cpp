// The host side of `ember run`: the EXEC frames Ember sends (api/run/session.hpp) decoded by the
// protocol's own decoder as the agent would, and the agent initramfs (api/run/initramfs.hpp)
// read back as the kernel reads newc archives.

#include "api/run/initramfs.hpp"
#include "api/run/run_proto.h"
#include "api/run/session.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <string>

using ember::run::CommandSpec;
using ember::run::encode_exec_frames;

namespace {

// Decodes EXEC frames as the agent does; returns the concatenated spec.
std::vector<std::uint8_t> reassemble(const std::vector<std::uint8_t>& frames, std::size_t& count) {
    std::vector<std::uint8_t> spec;
    std::size_t off = 0;
    count = 0;
    while (off < frames.size()) {
        erp_frame f{};
        std::size_t used = 0;
        REQUIRE(erp_decode(frames.data() + off, frames.size() - off, ERP_TO_GUEST, &f, &used) == ERP_OK);
        REQUIRE(f.type == ERP_T_EXEC);
        off += used;
        ++count;
        spec.insert(spec.end(), f.payload, f.payload + f.length);
        REQUIRE(((f.flags & ERP_F_MORE) != 0) == (off < frames.size()));
    }
    return spec;
}

std::uint32_t hex8(const std::vector<std::uint8_t>& b, std::size_t at) {
    return static_cast<std::uint32_t>(std::stoul(std::string(b.begin() + static_cast<std::ptrdiff_t>(at), b.begin() + static_cast<std::ptrdiff_t>(at + 8)), nullptr, 16));
}

} // namespace

TEST_CASE("ember run: the exec spec round-trips through the agent's parser") {
    CommandSpec s;
    s.argv = {"sh", "-c", "printf '%s' \"$X\"", "", "ünï ✓"};
    s.env = {"X=a b=c", "EMPTY="};
    s.cwd = "/tmp";
    s.tty = true;
    s.rows = 33;
    s.cols = 101;
    std::size_t n = 0;
    const auto spec = reassemble(encode_exec_frames(s), n);
    CHECK(n == 1);
    erp_exec e{};
    REQUIRE(erp_exec_parse(spec.data(), spec.size(), &e) == ERP_OK);
    CHECK(e.flags == ERP_EXEC_TTY);
    CHECK(e.rows == 33);
    CHECK(e.cols == 101);
    CHECK(std::string(e.cwd) == "/tmp");
    REQUIRE(e.argc == 5);
    REQUIRE(e.envc == 2);
    const char* p = e.strings;
    for (const auto& a : s.argv) {
        CHECK(std::string(p) == a);
        p = erp_next_string(p);
    }
    for (const auto& v : s.env) {
        CHECK(std::string(p) == v);
        p = erp_next_string(p);
    }
}

TEST_CASE("ember run: a large exec spec is split into 64 KiB EXEC frames") {
    CommandSpec s;
    s.argv = {"true"};
    for (int i = 0; i < 300; ++i) s.argv.push_back(std::string(3000, static_cast<char>('a' + i % 26)));
    std::size_t n = 0;
    const auto spec = reassemble(encode_exec_frames(s), n);
    CHECK(n == (spec.size() + ERP_MAX_PAYLOAD - 1) / ERP_MAX_PAYLOAD);
    CHECK(n > 1);
    erp_exec e{};
    REQUIRE(erp_exec_parse(spec.data(), spec.size(), &e) == ERP_OK);
    CHECK(e.argc == 301);
}

TEST_CASE("ember run: commands the spec cannot carry are refused before the VM boots") {
    CommandSpec s;
    CHECK_THROWS_AS(encode_exec_frames(s), std::invalid_argument); // no argv
    s.argv = {""};
    CHECK_THROWS_AS(encode_exec_frames(s), std::invalid_argument);
    s.argv = {"env"};
    s.env = {"NOEQUALS"};
    CHECK_THROWS_AS(encode_exec_frames(s), std::invalid_argument);
    s.env = {"=value"};
    CHECK_THROWS_AS(encode_exec_frames(s), std::invalid_argument);
    s.env = {};
    s.argv = {"x", std::string(ERP_MAX_EXEC, 'y')};
    CHECK_THROWS_AS(encode_exec_frames(s), std::invalid_argument);
}

TEST_CASE("ember run: the agent initramfs is a newc archive with the agent as /init") {
    const std::vector<std::uint8_t> agent = {0x7f, 'E', 'L', 'F', 1, 2, 3};
    const auto a = ember::run::agent_initramfs(agent);
    std::map<std::string, std::pair<std::uint32_t, std::vector<std::uint8_t>>> entries; // name -> mode, data
    std::size_t off = 0;
    for (;;) {
        REQUIRE(off + 110 <= a.size());
        REQUIRE(std::string(a.begin() + static_cast<std::ptrdiff_t>(off), a.begin() + static_cast<std::ptrdiff_t>(off + 6)) == "070701");
        const std::uint32_t mode = hex8(a, off + 6 + 8), size = hex8(a, off + 6 + 6 * 8), namesize = hex8(a, off + 6 + 11 * 8);
        const std::uint32_t rmajor = hex8(a, off + 6 + 9 * 8), rminor = hex8(a, off + 6 + 10 * 8);
        std::size_t p = off + 110;
        REQUIRE(p + namesize <= a.size());
        const std::string name(reinterpret_cast<const char*>(a.data() + p), namesize - 1);
        CHECK(a[p + namesize - 1] == 0);
        p = (p + namesize + 3) & ~std::size_t{3};
        REQUIRE(p + size <= a.size());
        if (name == "TRAILER!!!") break;
        entries[name] = {mode, std::vector<std::uint8_t>(a.begin() + static_cast<std::ptrdiff_t>(p), a.begin() + static_cast<std::ptrdiff_t>(p + size))};
        if (name == "dev/console") {
            CHECK(rmajor == 5);
            CHECK(rminor == 1);
        }
        off = (p + size + 3) & ~std::size_t{3};
    }
    REQUIRE(entries.count("init") == 1);
    CHECK(entries["init"].first == 0100755);
    CHECK(entries["init"].second == agent);
    CHECK(entries["dev/console"].first == 0020600);
    for (const char* d : {"dev", "proc", "sys", "tmp", "run", "newroot"}) CHECK(entries[d].first == 0040755);
    CHECK(a.size() % 4 == 0);
}

TEST_CASE("ember run: Ember carries the agent it was built with") {
    const auto bin = ember::run::agent_binary();
    REQUIRE(bin.size() > 4096);
    CHECK(bin[0] == 0x7f);
    CHECK(bin[1] == 'E');
    CHECK(bin[2] == 'L');
    CHECK(bin[3] == 'F');
}
