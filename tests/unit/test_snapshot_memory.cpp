// Snapshot memory files (vmm/snapshot_memory.hpp) and their merge (vmm/base/sparse_file.hpp):
// a Diff holds data exactly at the dirty pages (a dirty zero page included) and holes elsewhere;
// merging Diffs onto their base gives the later memory byte for byte.

#include "test_util.hpp"

#include "vmm/base/guest_memory.hpp"
#include "vmm/base/sparse_file.hpp"
#include "vmm/snapshot_memory.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace ember;
using ember::test::TempDir;

namespace {

constexpr std::uint64_t P = GuestMemory::PAGE_SIZE;

// Two regions with a gap between them, as the x86 layout has: 64 pages at 0, 32 at 1 MiB.
GuestMemory small_memory() { return GuestMemory::with_regions({{GuestAddr(0), 64 * P}, {GuestAddr(0x100000), 32 * P}}); }

GuestAddr page_addr(std::size_t region, std::uint64_t page) { return GuestAddr((region == 0 ? 0 : 0x100000) + page * P); }

void fill_page(GuestMemory& mem, std::size_t region, std::uint64_t page, std::uint8_t value) {
    std::vector<std::byte> bytes(P, std::byte{value});
    REQUIRE(mem.write(page_addr(region, page), bytes));
}

std::vector<char> read_all(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}

// The bytes of guest RAM as a memory file lays them out.
std::vector<char> image(const GuestMemory& mem) {
    std::vector<char> out(mem.total_size());
    for (const auto& r : mem.regions()) std::memcpy(out.data() + r.offset, r.host, r.range.size());
    return out;
}

std::vector<Extent> extents_of(const std::string& path) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(fd.valid());
    return data_extents(fd.get(), path);
}

DirtyBitmaps take_all(GuestMemory& mem) {
    DirtyBitmaps out;
    for (std::size_t i = 0; i < mem.regions().size(); ++i) out.push_back(mem.take_dirty_bitmap(i));
    return out;
}

} // namespace

TEST_CASE("snapshot memory: a Diff has data at the dirty pages, a dirty zero page included, and holes elsewhere") {
    TempDir dir;
    GuestMemory mem = small_memory();
    for (std::uint64_t p = 0; p < 64; ++p) fill_page(mem, 0, p, 0xaa); // before tracking: not in the Diff
    mem.enable_dirty_tracking();
    fill_page(mem, 0, 3, 0x11);
    fill_page(mem, 0, 4, 0x12);
    fill_page(mem, 0, 7, 0x00); // written with zeros: must be data, or a merge keeps 0xaa
    fill_page(mem, 1, 31, 0x33);
    const std::string path = dir.file("diff.mem");
    CHECK(write_diff_memory(mem, take_all(mem), path) == 4);

    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(static_cast<std::uint64_t>(st.st_size) == 96 * P);
    CHECK(extents_of(path) == std::vector<Extent>{{3 * P, 2 * P}, {7 * P, P}, {(64 + 31) * P, P}});
    const auto bytes = read_all(path);
    const auto want = image(mem);
    for (std::uint64_t p : {3u, 4u, 7u, 95u})
        CHECK(std::memcmp(bytes.data() + p * P, want.data() + p * P, P) == 0);
    CHECK(bytes[7 * P] == 0);
    // A second Diff with nothing written since: no data at all.
    const std::string empty = dir.file("empty.mem");
    CHECK(write_diff_memory(mem, take_all(mem), empty) == 0);
    CHECK(extents_of(empty).empty());
}

TEST_CASE("snapshot memory: a Full leaves zero pages as holes; Diffs merged onto it give the later memory") {
    TempDir dir;
    GuestMemory mem = small_memory();
    for (std::uint64_t p = 0; p < 40; ++p) fill_page(mem, 0, p, static_cast<std::uint8_t>(p + 1));
    fill_page(mem, 1, 0, 0x77);
    const std::string base = dir.file("base.mem"), d1 = dir.file("d1.mem"), d2 = dir.file("d2.mem"), out = dir.file("out.mem");
    write_full_memory(mem, base);
    CHECK(read_all(base) == image(mem));
    CHECK(extents_of(base) == std::vector<Extent>{{0, 40 * P}, {64 * P, P}});
    const auto base_image = image(mem);

    mem.enable_dirty_tracking();
    fill_page(mem, 0, 5, 0x00);  // data page zeroed
    fill_page(mem, 0, 50, 0x50); // hole page written
    REQUIRE(write_diff_memory(mem, take_all(mem), d1) == 2);
    fill_page(mem, 0, 5, 0x55); // written again in the next layer: the later one wins
    fill_page(mem, 1, 10, 0x10);
    REQUIRE(write_diff_memory(mem, take_all(mem), d2) == 2);
    const auto final_image = image(mem);

    SECTION("into a new file with --out: the base stays as it was") {
        const auto sum = merge_memory_files(base, {d1, d2}, out);
        CHECK(sum.result == out);
        CHECK(read_all(out) == final_image);
        CHECK(read_all(base) == base_image);
        // The base's holes stay holes in the copy.
        struct stat st {};
        REQUIRE(::stat(out.c_str(), &st) == 0);
        CHECK(static_cast<std::uint64_t>(st.st_blocks) * 512 < 60 * P);
    }
    SECTION("in place") {
        const auto sum = merge_memory_files(base, {d1, d2}, std::nullopt);
        CHECK(sum.result == base);
        CHECK(sum.bytes_copied == 4 * P);
        CHECK(read_all(base) == final_image);
    }
    SECTION("only the first layer") {
        merge_memory_files(base, {d1}, std::nullopt);
        const auto merged = read_all(base);
        CHECK(merged[5 * P] == 0);
        CHECK(static_cast<unsigned char>(merged[50 * P]) == 0x50);
        CHECK(merged[(64 + 10) * P] == 0);
    }
}

TEST_CASE("snapshot memory: a Diff into an existing memory file of RAM's size is an in-place merge") {
    TempDir dir;
    GuestMemory mem = small_memory();
    for (std::uint64_t p = 0; p < 64; ++p) fill_page(mem, 0, p, 0x42);
    const std::string path = dir.file("vm.mem");
    write_full_memory(mem, path);
    mem.enable_dirty_tracking();
    fill_page(mem, 0, 9, 0x99);
    fill_page(mem, 1, 1, 0x01);
    CHECK(write_diff_memory(mem, take_all(mem), path) == 2);
    CHECK(read_all(path) == image(mem));

    // A file of another size is emptied first: only the dirty pages are data.
    const std::string other = dir.file("other.mem");
    { std::ofstream(other, std::ios::binary) << std::string(3 * P, 'x'); }
    fill_page(mem, 0, 2, 0x22);
    CHECK(write_diff_memory(mem, take_all(mem), other) == 1);
    CHECK(extents_of(other) == std::vector<Extent>{{2 * P, P}});
}

TEST_CASE("snapshot memory: a failed Diff gives its dirty pages back for the next one") {
    TempDir dir;
    GuestMemory mem = small_memory();
    mem.enable_dirty_tracking();
    fill_page(mem, 0, 1, 0x01);
    fill_page(mem, 1, 2, 0x02);
    const DirtyBitmaps taken = take_all(mem);
    // /dev/full: every write fails with ENOSPC.
    CHECK_CONFIG_ERROR(write_diff_memory(mem, taken, "/dev/full"), "cannot write memory file /dev/full");
    CHECK(take_all(mem)[0][0] == 0); // taken: nothing left
    restore_dirty(mem, taken, true);
    fill_page(mem, 0, 6, 0x06); // written meanwhile: joins the given-back pages
    const std::string path = dir.file("retry.mem");
    CHECK(write_diff_memory(mem, take_all(mem), path) == 3);
    CHECK(extents_of(path) == std::vector<Extent>{{P, P}, {6 * P, P}, {(64 + 2) * P, P}});
}

TEST_CASE("snapshot memory: resident_bitmap marks the pages the host holds") {
    GuestMemory mem = small_memory();
    // Untouched anonymous memory is not resident; written pages are.
    for (std::size_t i = 0; i < 2; ++i)
        for (auto w : mem.resident_bitmap(i)) CHECK(w == 0);
    fill_page(mem, 0, 2, 1);
    fill_page(mem, 0, 63, 1);
    fill_page(mem, 1, 0, 1);
    CHECK(mem.resident_bitmap(0) == std::vector<std::uint64_t>{(std::uint64_t{1} << 2) | (std::uint64_t{1} << 63)});
    CHECK(mem.resident_bitmap(1) == std::vector<std::uint64_t>{1});
    CHECK(mem.resident_bitmap(2).empty());
    // A Diff from it holds exactly those pages.
    TempDir dir;
    const std::string path = dir.file("mincore.mem");
    CHECK(write_diff_memory(mem, {mem.resident_bitmap(0), mem.resident_bitmap(1)}, path) == 3);
}

TEST_CASE("snapshot-merge refuses files that are not layers of one VM, changing nothing") {
    TempDir dir;
    const std::string base = dir.file("base.mem"), diff = dir.file("diff.mem"), small = dir.file("small.mem");
    { std::ofstream(base, std::ios::binary) << std::string(4 * P, 'b'); }
    { std::ofstream(diff, std::ios::binary) << std::string(4 * P, 'd'); }
    { std::ofstream(small, std::ios::binary) << std::string(2 * P, 's'); }
    CHECK_CONFIG_ERROR(merge_memory_files(base, {small}, std::nullopt),
                       small + " is 8192 bytes, " + base + " is 16384: not layers of one VM");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {diff, small}, std::nullopt), "not layers of one VM");
    CHECK(read_all(base) == std::vector<char>(4 * P, 'b')); // the first, good, diff was not applied either
    CHECK_CONFIG_ERROR(merge_memory_files(dir.path() + "/none", {diff}, std::nullopt), "Invalid base file: " + dir.path() + "/none");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {dir.path()}, std::nullopt), "Invalid diff file: " + dir.path() + " is not a regular file");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {base}, std::nullopt), "is the base file itself");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {diff}, base), "is the base file");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {diff}, diff), "is the diff file");
    CHECK_CONFIG_ERROR(merge_memory_files(base, {}, std::nullopt), "at least one DIFF");
    CHECK(read_all(base) == std::vector<char>(4 * P, 'b'));
    CHECK(read_all(diff) == std::vector<char>(4 * P, 'd'));
    // A Diff without holes (all data) replaces every byte.
    merge_memory_files(base, {diff}, std::nullopt);
    CHECK(read_all(base) == std::vector<char>(4 * P, 'd'));
}
