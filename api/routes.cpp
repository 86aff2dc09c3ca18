#include "api/routes.hpp"

#include "api/config.hpp"
#include "api/cpu_config.hpp"
#include "api/rate_limiter_config.hpp"
#include "vmm/base/error.hpp"

#include <cctype>

namespace ember::api {
namespace {

using nlohmann::json;

json parse_body(const std::string& body) {
    if (body.empty()) throw ConfigError("the request needs a JSON body");
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        // parse_error, and out_of_range for numbers that overflow a double (found by fuzzing).
        throw ConfigError(std::string("the request body is not valid JSON: ") + e.what());
    }
}

void require_object(const json& j) {
    if (!j.is_object()) throw ConfigError("the request body must be a JSON object");
}

std::string string_field(const json& j, const char* name, bool required) {
    auto it = j.find(name);
    if (it == j.end()) {
        if (required) throw ConfigError(std::string("missing required field \"") + name + "\"");
        return {};
    }
    if (!it->is_string()) throw ConfigError(std::string("\"") + name + "\" must be a string");
    return it->get<std::string>();
}

const char* kNotSupported = " is not supported by this Ember version yet";

Action route_or_throw(Method m, const std::string& method, const std::string& path, const std::string& body) {
    auto invalid = [&]() -> ConfigError {
        return ConfigError("Invalid request method and/or path: " + method + " " + path);
    };
    if (path == "/") {
        if (m == Method::Get) return GetInstanceInfo{};
        throw invalid();
    }
    if (path == "/version") {
        if (m == Method::Get) return GetVersion{};
        throw invalid();
    }
    if (path == "/machine-config") {
        if (m == Method::Get) return GetMachineConfig{};
        if (m == Method::Put) {
            json j = parse_body(body);
            require_object(j);
            return PutMachineConfig{std::move(j)};
        }
        if (m == Method::Patch) {
            json j = parse_body(body);
            require_object(j);
            if (j.empty()) throw ConfigError("empty PATCH request");
            return PatchMachineConfig{std::move(j)};
        }
        throw invalid();
    }
    if (path == "/boot-source") {
        if (m != Method::Put) throw invalid();
        return PutBootSource{parse_boot_source(parse_body(body))};
    }
    if (path == "/actions") {
        if (m != Method::Put) throw invalid();
        json j = parse_body(body);
        require_object(j);
        reject_unknown(j, "actions", {"action_type"});
        const std::string t = string_field(j, "action_type", true);
        if (t == "InstanceStart") return InstanceStart{};
        if (t == "SendCtrlAltDel") return SendCtrlAltDel{};
        if (t == "FlushMetrics") return FlushMetrics{};
        throw ConfigError("unknown action_type \"" + t + "\" (InstanceStart, SendCtrlAltDel or FlushMetrics)");
    }
    if (path == "/vm") {
        if (m != Method::Patch) throw invalid();
        json j = parse_body(body);
        require_object(j);
        reject_unknown(j, "vm", {"state"});
        const std::string s = string_field(j, "state", true);
        if (s == "Paused") return PatchVmState{true};
        if (s == "Resumed") return PatchVmState{false};
        throw ConfigError("unknown vm state \"" + s + "\" (Paused or Resumed)");
    }
    if (path == "/vm/config") {
        if (m == Method::Get) return GetVmConfig{};
        throw invalid();
    }
    if (path == "/logger") {
        if (m != Method::Put) throw invalid();
        LoggerConfig c = parse_logger(parse_body(body));
        return PutLogger{std::move(c)};
    }
    if (path == "/metrics") {
        if (m != Method::Put) throw invalid();
        json j = parse_body(body);
        require_object(j);
        return PutMetrics{parse_metrics(j)};
    }
    if (path.rfind("/drives/", 0) == 0) {
        if (m != Method::Put && m != Method::Patch) throw invalid();
        const std::string id = path.substr(8);
        if (!valid_resource_id(id)) throw ConfigError("invalid drive id \"" + id + "\"");
        json j = parse_body(body);
        require_object(j);
        if (m == Method::Put) {
            DriveConfig d = parse_drive(j);
            if (d.drive_id != id) throw ConfigError("The id from the path does not match the id from the body!");
            return PutDrive{std::move(d)};
        }
        reject_unknown(j, "drive", {"drive_id", "path_on_host", "rate_limiter"});
        PatchDrive p{string_field(j, "drive_id", true), std::nullopt, std::nullopt};
        if (p.drive_id != id) throw ConfigError("The id from the path does not match the id from the body!");
        if (j.contains("path_on_host")) {
            p.path_on_host = string_field(j, "path_on_host", true);
            if (p.path_on_host->empty()) throw ConfigError("drive " + id + ".path_on_host must not be empty");
        }
        if (auto r = j.find("rate_limiter"); r != j.end() && !r->is_null())
            p.rate_limiter = parse_rate_limiter_update(&*r, "drive " + id + ".rate_limiter");
        return p;
    }
    if (path.rfind("/network-interfaces/", 0) == 0) {
        if (m != Method::Put && m != Method::Patch) throw invalid();
        const std::string id = path.substr(20);
        if (!valid_resource_id(id)) throw ConfigError("invalid network interface id \"" + id + "\"");
        json j = parse_body(body);
        require_object(j);
        if (m == Method::Patch) { // PartialNetworkInterface: rate limiter updates
            reject_unknown(j, "network-interface", {"iface_id", "rx_rate_limiter", "tx_rate_limiter"});
            PatchNet p{string_field(j, "iface_id", true), {}, {}};
            if (p.iface_id != id) throw ConfigError("The id from the path does not match the id from the body!");
            const std::string w = "network interface " + id;
            auto field = [&j](const char* k) { auto it = j.find(k); return it == j.end() ? nullptr : &*it; };
            p.rx_rate_limiter = parse_rate_limiter_update(field("rx_rate_limiter"), w + ".rx_rate_limiter");
            p.tx_rate_limiter = parse_rate_limiter_update(field("tx_rate_limiter"), w + ".tx_rate_limiter");
            return p;
        }
        NetConfig n = parse_net(j);
        if (n.iface_id != id) throw ConfigError("The id from the path does not match the id from the body!");
        return PutNet{std::move(n)};
    }
    if (path == "/serial") {
        if (m != Method::Put) throw invalid();
        const json j = parse_body(body);
        std::optional<std::string> out = parse_serial(j);
        return PutSerial{std::move(out), parse_serial_rate_limiter(j)};
    }
    if (path == "/console") { // Ember's own: which device carries the interactive console
        if (m != Method::Put) throw invalid();
        return PutConsole{parse_console(parse_body(body))};
    }
    if (path == "/cpu-config") {
        if (m != Method::Put) throw invalid();
        return PutCpuConfig{parse_cpu_config(parse_body(body))};
    }
    if (path == "/entropy") {
        if (m != Method::Put) throw invalid();
        return PutEntropy{parse_entropy(parse_body(body))};
    }
    if (path == "/vsock") {
        if (m != Method::Put) throw invalid();
        return PutVsock{parse_vsock(parse_body(body))};
    }
    if (path == "/snapshot/create") {
        if (m != Method::Put) throw invalid();
        return CreateSnapshot{parse_snapshot_create(parse_body(body))};
    }
    if (path == "/snapshot/load") {
        if (m != Method::Put) throw invalid();
        return LoadSnapshot{parse_snapshot_load(parse_body(body))};
    }
    if (path == "/balloon" || path.rfind("/balloon/", 0) == 0) return route_balloon(method, path, body);
    static const char* later[] = {"/mmds",
                                  "/hotplug/", "/pmem/"};
    for (const char* p : later)
        if (path.rfind(p, 0) == 0) throw ConfigError(std::string(p) + kNotSupported);
    throw invalid();
}

} // namespace

std::string Response::dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }
Response Response::bad_request(const std::string& msg) { return {400, dump_json(json{{"fault_message", msg}})}; }
Response Response::internal_error(const std::string& msg) { return {500, dump_json(json{{"fault_message", msg}})}; }

Method method_of(const std::string& m) {
    if (m == "GET") return Method::Get;
    if (m == "PUT") return Method::Put;
    if (m == "PATCH") return Method::Patch;
    return Method::Other;
}

std::variant<Action, Response> route(const std::string& method, const std::string& target, const std::string& body) {
    // The query string plays no part in Firecracker's routes.
    const std::string path = target.substr(0, target.find('?'));
    try {
        return route_or_throw(method_of(method), method, path, body);
    } catch (const std::exception& e) {
        return Response::bad_request(e.what());
    }
}

const char* action_name(const Action& a) {
    struct V {
        const char* operator()(const GetInstanceInfo&) const { return "instance_info"; }
        const char* operator()(const GetVersion&) const { return "vmm_version"; }
        const char* operator()(const GetMachineConfig&) const { return "machine_cfg"; }
        const char* operator()(const GetVmConfig&) const { return "vm_config"; }
        const char* operator()(const PutMachineConfig&) const { return "machine_cfg"; }
        const char* operator()(const PatchMachineConfig&) const { return "machine_cfg"; }
        const char* operator()(const PutBootSource&) const { return "boot_source"; }
        const char* operator()(const InstanceStart&) const { return "actions"; }
        const char* operator()(const SendCtrlAltDel&) const { return "actions"; }
        const char* operator()(const FlushMetrics&) const { return "actions"; }
        const char* operator()(const PatchVmState&) const { return "vm"; }
        const char* operator()(const PutLogger&) const { return "logger"; }
        const char* operator()(const PutMetrics&) const { return "metrics"; }
        const char* operator()(const PutDrive&) const { return "drive"; }
        const char* operator()(const PatchDrive&) const { return "drive"; }
        const char* operator()(const PutNet&) const { return "network"; }
        const char* operator()(const PatchNet&) const { return "network"; }
        const char* operator()(const PutSerial&) const { return "serial"; }
        const char* operator()(const PutConsole&) const { return "console"; }
        const char* operator()(const PutCpuConfig&) const { return "cpu_cfg"; }
        const char* operator()(const PutEntropy&) const { return "entropy"; }
        const char* operator()(const PutVsock&) const { return "vsock"; }
        const char* operator()(const CreateSnapshot&) const { return "snapshot_create"; }
        const char* operator()(const LoadSnapshot&) const { return "snapshot_load"; }
        const char* operator()(const BalloonRequest&) const { return "balloon"; }
    };
    return std::visit(V{}, a);
}

Method action_method(const Action& a) {
    struct V {
        Method operator()(const GetInstanceInfo&) const { return Method::Get; }
        Method operator()(const GetVersion&) const { return Method::Get; }
        Method operator()(const GetMachineConfig&) const { return Method::Get; }
        Method operator()(const GetVmConfig&) const { return Method::Get; }
        Method operator()(const PutMachineConfig&) const { return Method::Put; }
        Method operator()(const PatchMachineConfig&) const { return Method::Patch; }
        Method operator()(const PutBootSource&) const { return Method::Put; }
        Method operator()(const InstanceStart&) const { return Method::Put; }
        Method operator()(const SendCtrlAltDel&) const { return Method::Put; }
        Method operator()(const FlushMetrics&) const { return Method::Put; }
        Method operator()(const PatchVmState&) const { return Method::Patch; }
        Method operator()(const PutLogger&) const { return Method::Put; }
        Method operator()(const PutMetrics&) const { return Method::Put; }
        Method operator()(const PutDrive&) const { return Method::Put; }
        Method operator()(const PatchDrive&) const { return Method::Patch; }
        Method operator()(const PutNet&) const { return Method::Put; }
        Method operator()(const PatchNet&) const { return Method::Patch; }
        Method operator()(const PutSerial&) const { return Method::Put; }
        Method operator()(const PutConsole&) const { return Method::Put; }
        Method operator()(const PutCpuConfig&) const { return Method::Put; }
        Method operator()(const PutEntropy&) const { return Method::Put; }
        Method operator()(const PutVsock&) const { return Method::Put; }
        Method operator()(const CreateSnapshot&) const { return Method::Put; }
        Method operator()(const LoadSnapshot&) const { return Method::Put; }
        Method operator()(const BalloonRequest& b) const { return b.is_get() ? Method::Get : b.is_patch() ? Method::Patch : Method::Put; }
    };
    return std::visit(V{}, a);
}

} // namespace ember::api
