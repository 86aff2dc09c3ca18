#pragma once
// Firecracker's REST API as pure functions: (method, path, body) -> a typed action, or a 400 with
// a fault message. No I/O here: the HTTP server feeds it, the controller executes the action on
// the VMM thread, and the unit tests call it directly.

#include "api/config.hpp"
#include "api/balloon_config.hpp"
#include "api/entropy_config.hpp"
#include "api/snapshot_config.hpp"
#include "vmm/vm_config.hpp"

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>

namespace ember::api {

struct GetInstanceInfo {};
struct GetVersion {};
struct GetMachineConfig {};
struct GetVmConfig {};
struct PutMachineConfig { nlohmann::json body; };   // validated against the current config later
struct PatchMachineConfig { nlohmann::json body; };
struct PutBootSource { BootSourceConfig config; };
struct InstanceStart {};
struct SendCtrlAltDel {};
struct FlushMetrics {};
struct PatchVmState { bool pause; };
struct PutLogger { LoggerConfig config; };
struct PutMetrics { std::string metrics_path; };
struct PutDrive { DriveConfig config; };
// PATCH /drives/{id}: Firecracker's PartialDrive (a new image for a running drive).
struct PatchDrive {
    std::string drive_id;
    std::optional<std::string> path_on_host;
    std::optional<RateLimiterUpdate> rate_limiter;
};
// PATCH /network-interfaces/{id}: Firecracker's PartialNetworkInterface (rate limiter updates).
struct PatchNet {
    std::string iface_id;
    RateLimiterUpdate rx_rate_limiter, tx_rate_limiter;
};

struct PutNet { NetConfig config; };
struct PutSerial {
    std::optional<std::string> serial_out_path;
    std::optional<TokenBucketConfig> rate_limiter;
};
struct PutConsole { ConsoleDevice device; };
struct PutVsock { VsockConfig config; };
// PUT /cpu-config: Firecracker's custom CPU template (pre-boot).
struct PutCpuConfig { CustomCpuTemplate config; };
// PUT /entropy: Firecracker's EntropyDevice (pre-boot).
struct PutEntropy { EntropyConfig config; };
struct CreateSnapshot { SnapshotCreateParams params; };
struct LoadSnapshot { SnapshotLoadParams params; };

using Action = std::variant<GetInstanceInfo, GetVersion, GetMachineConfig, GetVmConfig, PutMachineConfig,
                            PatchMachineConfig, PutBootSource, InstanceStart, SendCtrlAltDel, FlushMetrics,
                            PatchVmState, PutLogger, PutMetrics, PutDrive, PatchDrive, PutNet, PatchNet, PutSerial, PutConsole,
                            PutCpuConfig, PutEntropy, PutVsock, CreateSnapshot, LoadSnapshot, BalloonRequest>;

struct Response {
    unsigned status = 204;   // 200 with a JSON body, 204 empty, 400 {"fault_message": ...}
    std::string body;        // JSON text or empty
    static Response ok_json(const nlohmann::json& j) { return {200, dump_json(j)}; }
    static Response no_content() { return {204, {}}; }
    static Response bad_request(const std::string& msg);
    static Response internal_error(const std::string& msg);
    // Serialises without throwing: client-supplied strings (paths, echoed parse errors) may
    // hold invalid UTF-8, which nlohmann's default dump() refuses with an exception.
    static std::string dump_json(const nlohmann::json& j);
};

// Which request counter a route belongs to (Firecracker's metrics groups).
enum class Method { Get, Put, Patch, Other };
Method method_of(const std::string& m);

// Parses one request. Returns the action, or the 400 response to send.
std::variant<Action, Response> route(const std::string& method, const std::string& target, const std::string& body);

// A short name of the action for logs and metrics ("instance_info", "machine_cfg", ...).
const char* action_name(const Action& a);
// The HTTP method of the action's requests (which of Firecracker's request metric groups counts it).
Method action_method(const Action& a);

} // namespace ember::api
