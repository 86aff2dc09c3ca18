// The Uffd memory backend without KVM: the handshake's JSON, fd passing, the region-list
// parser, the page server filling a registered mapping from a file, and PUT /snapshot/load
// with mem_backend Uffd and nobody listening. Cases that need a userfaultfd able to take kernel
// faults (root, CAP_SYS_PTRACE or /dev/userfaultfd) WARN and skip when the kernel refuses one;
// snapshot_test.sh `uffd` proves the backend on real KVM.

#include "api/controller.hpp"
#include "api/routes.hpp"
#include "api/uffd_regions.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/scm_rights.hpp"
#include "vmm/base/uffd_server.hpp"
#include "vmm/base/userfaultfd.hpp"
#include "vmm/snapshot_file.hpp"
#include "vmm/uffd_backend.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstring>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <sys/mman.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace ember;

namespace {

constexpr std::uint64_t PAGE = 4096;

// A userfaultfd ready for MISSING faults and REMOVE events, or nullopt (with a WARN) when this
// kernel or user may not have one.
std::optional<UniqueFd> try_uffd() {
    try {
        UniqueFd u = uffd::open_userfaultfd();
        uffd::api(u.get(), UFFD_FEATURE_EVENT_REMOVE);
        return u;
    } catch (const std::exception& e) {
        WARN("SKIPPED: no userfaultfd here (" << e.what() << "); snapshot_test.sh uffd covers it on real KVM");
        return std::nullopt;
    }
}

std::string temp_path(const char* stem) {
    return std::string("/tmp/ember-uffd-test-") + stem + "-" + std::to_string(::getpid());
}

} // namespace

TEST_CASE("uffd: the handshake lists every region as Firecracker 1.16 does, and the handler reads it back") {
    GuestMemory mem = GuestMemory::with_regions({{GuestAddr(0), 0x100000}, {GuestAddr(0x100000000), 0x200000}});
    const auto& r = mem.regions();
    REQUIRE(r.size() == 2);
    const std::string h0 = std::to_string(reinterpret_cast<std::uintptr_t>(r[0].host));
    const std::string h1 = std::to_string(reinterpret_cast<std::uintptr_t>(r[1].host));
    CHECK(uffd_regions_json(mem, 4096) ==
          "[{\"base_host_virt_addr\":" + h0 + ",\"size\":1048576,\"offset\":0,\"page_size\":4096,\"page_size_kib\":4096},"
          "{\"base_host_virt_addr\":" + h1 + ",\"size\":2097152,\"offset\":1048576,\"page_size\":4096,\"page_size_kib\":4096}]");
    const auto parsed = parse_uffd_regions(uffd_regions_json(mem, 4096), 0x300000);
    REQUIRE(parsed.size() == 2);
    CHECK(parsed[1].base == reinterpret_cast<std::uintptr_t>(r[1].host));
    CHECK(parsed[1].size == 0x200000);
    CHECK(parsed[1].offset == 0x100000);
    CHECK(parsed[1].page_size == 4096);
}

TEST_CASE("uffd: the handler refuses region lists it cannot serve") {
    auto bad = [](const std::string& json, std::uint64_t file, const char* why) {
        INFO(json);
        CHECK_THROWS_WITH(parse_uffd_regions(json, file), Catch::Contains(why));
    };
    bad("not json", 4096, "not JSON");
    bad("[]", 4096, "non-empty JSON array");
    bad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0}])", 4096, "missing field `page_size_kib`");
    bad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":-1}])", 4096, "unsigned integer");
    bad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":6000}])", 4096, "power of two");
    bad(R"([{"base_host_virt_addr":4097,"size":4096,"offset":0,"page_size":4096}])", 4096, "multiples of the page size");
    bad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}])", 8192, "add up to 4096");
    bad(R"([{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}])", 4096, "lies past");
    bad(R"([{"base_host_virt_addr":18446744073709547520,"size":8192,"offset":0,"page_size":4096}])", 8192, "wraps");
    bad(R"([{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096},
            {"base_host_virt_addr":4096,"size":4096,"offset":4096,"page_size":4096}])", 8192, "overlap");
    // The deprecated field alone is enough (it holds bytes, despite its name).
    const auto r = parse_uffd_regions(R"([{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size_kib":4096}])", 4096);
    CHECK(r.at(0).page_size == 4096);
}

TEST_CASE("uffd: a file descriptor and its message cross a socketpair in one message") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd a(sv[0]), b(sv[1]);
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    UniqueFd rd(p[0]), wr(p[1]);
    const std::string msg = "[{\"x\":1}]";
    CHECK(send_with_fd(a.get(), std::as_bytes(std::span(msg.data(), msg.size())), wr.get()) == msg.size());
    wr.reset(); // the copy in flight keeps the pipe's write end open
    std::vector<std::byte> buf(1024);
    ReceivedMessage m = recv_with_fd(b.get(), buf);
    CHECK(std::string(reinterpret_cast<const char*>(buf.data()), m.len) == msg);
    REQUIRE(m.fd.valid());
    CHECK((::fcntl(m.fd.get(), F_GETFD) & FD_CLOEXEC) != 0);
    REQUIRE(::write(m.fd.get(), "ok", 2) == 2);
    char got[2];
    REQUIRE(::read(rd.get(), got, 2) == 2);
    CHECK(std::memcmp(got, "ok", 2) == 0);
    // A message without an fd, then the end of the stream.
    REQUIRE(::send(a.get(), "z", 1, 0) == 1);
    ReceivedMessage plain = recv_with_fd(b.get(), buf);
    CHECK(plain.len == 1);
    CHECK_FALSE(plain.fd.valid());
    a.reset();
    CHECK(recv_with_fd(b.get(), buf).len == 0);
}

TEST_CASE("uffd: the page server fills a registered mapping from the file, zeros for holes and removed pages") {
    auto u = try_uffd();
    if (!u) return;
    // A 16-page sparse file: pages 0-4 and 8-15 hold a pattern, pages 5-7 are a hole.
    constexpr std::uint64_t PAGES = 16;
    const std::string path = temp_path("mem");
    UniqueFd f(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    REQUIRE(f.valid());
    ::unlink(path.c_str());
    REQUIRE(::ftruncate(f.get(), static_cast<off_t>(PAGES * PAGE)) == 0);
    std::vector<std::byte> want(PAGES * PAGE);
    for (std::uint64_t p = 0; p < PAGES; ++p) {
        if (p >= 5 && p <= 7) continue;
        for (std::uint64_t i = 0; i < PAGE; ++i) want[p * PAGE + i] = static_cast<std::byte>((p * 31 + i) % 251 + 1);
        REQUIRE(::pwrite(f.get(), want.data() + p * PAGE, PAGE, static_cast<off_t>(p * PAGE)) == static_cast<ssize_t>(PAGE));
    }
    REQUIRE(::fsync(f.get()) == 0);
    Mapping file = Mapping::map(PAGES * PAGE, PROT_READ, MAP_PRIVATE, f.get(), 0, "map file");
    auto data = file_data_extents(f.get(), PAGES * PAGE);

    // The "guest": anonymous memory in two regions, registered for MISSING faults.
    Mapping guest = Mapping::map(PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0, "map guest");
    const auto base = reinterpret_cast<std::uint64_t>(guest.get());
    uffd::register_missing(u->get(), guest.get(), PAGES * PAGE);
    std::vector<UffdRegion> regions = {{base, 4 * PAGE, 0, PAGE}, {base + 4 * PAGE, 12 * PAGE, 4 * PAGE, PAGE}};

    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd vmm_end(sv[0]), handler_end(sv[1]);
    UffdPageServer server(std::move(*u), regions, std::span<const std::byte>(file.bytes(), file.size()), data);
    std::string error;
    std::thread t([&] {
        try {
            server.serve(handler_end.get());
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    const bool same = std::memcmp(guest.get(), want.data(), want.size()) == 0;
    // Given back (a balloon's MADV_DONTNEED): the handler hears of it before madvise returns, and
    // the next touch reads zeros, not the file.
    REQUIRE(::madvise(guest.bytes() + 2 * PAGE, PAGE, MADV_DONTNEED) == 0);
    std::vector<std::byte> zeros(PAGE);
    const bool removed_zero = std::memcmp(guest.bytes() + 2 * PAGE, zeros.data(), PAGE) == 0;
    vmm_end.reset(); // the VMM goes away: the server returns
    t.join();
    CHECK(error.empty());
    CHECK(same);
    CHECK(removed_zero);
    CHECK(server.stats().copied == 13);
    CHECK(server.stats().zero == 3 + 1);
    CHECK(server.stats().removed == 1);
}

TEST_CASE("uffd: PUT /snapshot/load with mem_backend Uffd and no handler is Firecracker's 400, and nothing starts") {
    // A snapshot this host would load: its CPU vendor, a 1-vCPU 128 MiB layout, no devices.
    SnapshotFile s;
    s.ember_version = "0.test";
    s.cpu_vendor = host_cpu().vendor;
    s.vm_config = R"({"machine-config":{"vcpu_count":1,"mem_size_mib":128},"boot-source":{"kernel_image_path":"/k"}})";
    std::uint64_t off = 0;
    for (const auto& [a, size] : layout::ram_regions(128ULL << 20)) {
        s.memory.push_back({a, size, off});
        off += size;
    }
    s.vm.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    s.vm.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    s.vm.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    s.vcpus.resize(1);
    const std::string snap = temp_path("snap");
    write_snapshot_file(snap, s);
    const std::string sock = temp_path("nobody.sock");

    boost::asio::io_context io;
    RunOptions opts;
    opts.kvm_path = "/nonexistent/kvm";
    api::Controller ctl(io, "test-vm", opts, 4096, nullptr);
    auto call = [&](const std::string& body) {
        auto r = api::route("PUT", "/snapshot/load", body);
        REQUIRE(std::holds_alternative<api::Action>(r));
        return ctl.handle(std::get<api::Action>(r));
    };
    const auto r = call(R"({"snapshot_path": ")" + snap + R"(", "mem_backend": {"backend_type": "Uffd", "backend_path": ")" + sock + R"("}})");
    ::unlink(snap.c_str());
    CHECK(r.status == 400);
    const std::string msg = nlohmann::json::parse(r.body).at("fault_message").get<std::string>();
    if (msg.find("Failed to UFFD object") != std::string::npos) {
        WARN("SKIPPED the connect check: no userfaultfd here (" << msg << ")");
    } else {
        CHECK(msg == "Cannot load snapshot: Failed to load guest memory: Error creating guest memory from uffd: "
                     "Failed to connect to UDS Unix stream: No such file or directory (os error 2)");
    }
    CHECK_FALSE(ctl.started());
}
