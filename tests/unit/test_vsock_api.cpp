// PUT /vsock binds uds_path when it arrives, as Firecracker's VsockBuilder::insert (its backend
// binds in VsockUnixBackend::new): a host client may connect before InstanceStart, a path that
// cannot be bound is a 400 naming it, and a second PUT removes the previous socket file.

#include "api/controller.hpp"
#include "api/routes.hpp"
#include "devices/virtio/vsock/backend.hpp"
#include "vmm/base/unique_fd.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace ember;
using namespace ember::api;
using nlohmann::json;

namespace {

struct Rig {
    boost::asio::io_context io;
    RunOptions opts;
    std::unique_ptr<Controller> ctl;
    Rig() {
        opts.kvm_path = "/nonexistent/kvm";
        ctl = std::make_unique<Controller>(io, "vsock-api-test", opts, 4096, nullptr);
    }
    Response call(const std::string& method, const std::string& path, const std::string& body = "") {
        auto r = route(method, path, body);
        REQUIRE(std::holds_alternative<Action>(r));
        return ctl->handle(std::get<Action>(r));
    }
};

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/ember-vsock-api-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};

bool is_socket(const std::string& p) {
    struct stat st{};
    return ::stat(p.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool can_connect(const std::string& p) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, p.data(), p.size());
    return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0;
}

std::string body(const std::string& path, int cid = 3) {
    return json{{"vsock_id", "agent_api"}, {"guest_cid", cid}, {"uds_path", path}}.dump();
}

std::string fault(const Response& r) {
    CHECK(r.status == 400);
    return json::parse(r.body).value("fault_message", "");
}

} // namespace

TEST_CASE("PUT /vsock binds uds_path at once; host clients can connect before InstanceStart", "[vsock][api]") {
    TempDir d;
    Rig r;
    const std::string a = d.path + "/a.sock";
    REQUIRE(r.call("PUT", "/vsock", body(a)).status == 204);
    CHECK(is_socket(a));
    CHECK(can_connect(a));
    // The same body again: the old socket is removed and the path bound anew.
    REQUIRE(r.call("PUT", "/vsock", body(a, 4)).status == 204);
    CHECK(can_connect(a));
    // Another path: the previous socket file is gone (Firecracker removes it in insert()).
    const std::string b = d.path + "/b.sock";
    REQUIRE(r.call("PUT", "/vsock", body(b)).status == 204);
    CHECK_FALSE(std::filesystem::exists(a));
    CHECK(can_connect(b));
    const json cfg = json::parse(r.call("GET", "/vm/config").body);
    CHECK(cfg.at("vsock").at("uds_path") == b);
    CHECK(cfg.at("vsock").at("guest_cid") == 3);
    (void)virtio::vsock::take_parked_listener(b);
}

TEST_CASE("PUT /vsock with a path that cannot be bound is a 400 naming it", "[vsock][api]") {
    TempDir d;
    Rig r;
    const std::string taken = d.path + "/taken";
    std::ofstream(taken) << "a file the user left here";
    CHECK(fault(r.call("PUT", "/vsock", body(taken))).find(taken) != std::string::npos);
    // Nothing was unlinked: the file is still the user's.
    std::ifstream in(taken);
    std::string line;
    std::getline(in, line);
    CHECK(line == "a file the user left here");
    CHECK(fault(r.call("PUT", "/vsock", body(d.path + "/no/such/dir/v.sock"))).find("no/such/dir") != std::string::npos);
    CHECK(json::parse(r.call("GET", "/vm/config").body).at("vsock").is_null());
    // A good path afterwards works.
    const std::string ok = d.path + "/ok.sock";
    CHECK(r.call("PUT", "/vsock", body(ok)).status == 204);
    CHECK(can_connect(ok));
    (void)virtio::vsock::take_parked_listener(ok);
}
