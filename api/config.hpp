#pragma once
// Firecracker's configuration schema (firecracker-api v1.16.1: BootSource, MachineConfiguration,
// and the --config-file document that groups them). One parser serves --config-file and the API;
// every error is a ConfigError with one line naming the field.

#include "vmm/vm_config.hpp"

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ember {

// PUT /logger and the config file's "logger" section (Firecracker's Logger).
struct LoggerConfig {
    std::optional<std::string> log_path;
    std::optional<std::string> level;
    std::optional<bool> show_level;
    std::optional<bool> show_log_origin;
    std::optional<std::string> module; // a source-path prefix in Ember (log::Options::module)
};

// A whole --config-file document: the VM, plus the optional logger and metrics sections.
struct ConfigFile {
    VmConfig vm;
    std::optional<LoggerConfig> logger;
    std::optional<std::string> metrics_path;
    std::vector<std::string> ignored_sections; // top-level keys that are no section (ignored, as Firecracker does)
};
// Firecracker 1.16's rules (vmm/src/resources.rs VmmConfig): unknown top-level keys are ignored,
// optional sections may be null; sections for devices Ember does not have yet are refused by name
// unless null.
ConfigFile parse_config_document(const std::string& text, std::uint64_t host_mem_mib);
// The VM part of parse_config_document().
VmConfig parse_config_file(const std::string& text, std::uint64_t host_mem_mib);
LoggerConfig parse_logger(const nlohmann::json& j);
// Firecracker's Metrics object: {"metrics_path": ...}.
std::string parse_metrics(const nlohmann::json& j);

BootSourceConfig parse_boot_source(const nlohmann::json& j);
MachineConfig parse_machine_config(const nlohmann::json& j, std::uint64_t host_mem_mib);
// Firecracker's Drive (virtio-block only: `socket`, vhost-user, is refused).
DriveConfig parse_drive(const nlohmann::json& j);
// Adds a drive to the list, or replaces the one with the same id (PUT /drives/{id} semantics).
// Throws ConfigError if another drive is already the root device.
void add_drive(std::vector<DriveConfig>& drives, DriveConfig d);
// Firecracker's NetworkInterface.
NetConfig parse_net(const nlohmann::json& j);
// Adds an interface or replaces the one with the same id (PUT /network-interfaces/{id}).
void add_net(std::vector<NetConfig>& nets, NetConfig n);
// Firecracker's SerialDevice ({"serial_out_path": ..., "rate_limiter": ...}): the path; the
// rate limiter is checked here and read with parse_serial_rate_limiter (rate_limiter_config.hpp).
std::optional<std::string> parse_serial(const nlohmann::json& j);
// Ember's console switch ({"device": "serial" | "virtio"}), in the config file and PUT /console.
ConsoleDevice parse_console(const nlohmann::json& j);
// Firecracker's resource ids: 1-64 characters from [a-zA-Z0-9_].
bool valid_resource_id(const std::string& id);

nlohmann::json to_json(const BootSourceConfig& b);
nlohmann::json to_json(const MachineConfig& m);
nlohmann::json to_json(const DriveConfig& d);
nlohmann::json to_json(const NetConfig& n);
const char* to_string(ConsoleDevice d) noexcept;
// Firecracker's Vsock: guest_cid (3 to 2^32-2) and uds_path required; vsock_id deprecated, optional.
VsockConfig parse_vsock(const nlohmann::json& j);
nlohmann::json to_json(const VsockConfig& v);
// The --config-file shape (what GET /vm/config returns).
nlohmann::json to_json(const VmConfig& c);

// Firecracker's request and config structs deny unknown fields: throws ConfigError
// "<where>: unknown field "<key>"" for the first key of `j` not in `known`.
void reject_unknown(const nlohmann::json& j, const std::string& where, std::initializer_list<const char*> known);

// MemTotal of this host in MiB (upper bound for mem_size_mib).
std::uint64_t host_memory_mib();

} // namespace ember
