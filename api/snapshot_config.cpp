#include "api/snapshot_config.hpp"

#include "api/config.hpp"
#include "vmm/base/error.hpp"

namespace ember {
namespace {

std::string required_path(const nlohmann::json& j, const char* where, const char* field) {
    auto it = j.find(field);
    if (it == j.end()) throw ConfigError(std::string(where) + ": missing field `" + field + "`");
    if (!it->is_string()) throw ConfigError(std::string(where) + "." + field + " must be a string");
    const auto s = it->get<std::string>();
    if (s.empty()) throw ConfigError(std::string(where) + "." + field + " must not be empty");
    return s;
}

bool optional_bool(const nlohmann::json& j, const char* where, const char* field) {
    auto it = j.find(field);
    if (it == j.end() || it->is_null()) return false;
    if (!it->is_boolean()) throw ConfigError(std::string(where) + "." + field + " must be true or false");
    return it->get<bool>();
}

} // namespace

SnapshotCreateParams parse_snapshot_create(const nlohmann::json& j) {
    if (!j.is_object()) throw ConfigError("snapshot create parameters must be a JSON object");
    reject_unknown(j, "snapshot/create", {"snapshot_path", "mem_file_path", "snapshot_type"});
    SnapshotCreateParams p;
    p.snapshot_path = required_path(j, "snapshot/create", "snapshot_path");
    p.mem_file_path = required_path(j, "snapshot/create", "mem_file_path");
    if (auto t = j.find("snapshot_type"); t != j.end() && !t->is_null()) {
        if (!t->is_string()) throw ConfigError("snapshot/create.snapshot_type must be \"Full\" or \"Diff\"");
        const auto s = t->get<std::string>();
        if (s == "Diff") p.diff = true;
        else if (s != "Full") throw ConfigError("unknown snapshot_type \"" + s + "\" (Full or Diff)");
    }
    if (p.snapshot_path == p.mem_file_path) throw ConfigError("snapshot_path and mem_file_path must be different files");
    return p;
}

SnapshotLoadParams parse_snapshot_load(const nlohmann::json& j) {
    constexpr const char* where = "snapshot/load";
    if (!j.is_object()) throw ConfigError("snapshot load parameters must be a JSON object");
    reject_unknown(j, where,
                   {"snapshot_path", "mem_file_path", "mem_backend", "enable_diff_snapshots", "track_dirty_pages", "resume_vm",
                    "network_overrides", "vsock_override", "clock_realtime"});
    SnapshotLoadParams p;
    p.snapshot_path = required_path(j, where, "snapshot_path");
    const bool has_backend = j.contains("mem_backend") && !j["mem_backend"].is_null();
    const bool has_file = j.contains("mem_file_path") && !j["mem_file_path"].is_null();
    // Firecracker's messages (api_server/request/snapshot.rs).
    if (has_backend && has_file) throw ConfigError("too many fields: either `mem_backend` or `mem_file_path` exclusively is required");
    if (!has_backend && !has_file) throw ConfigError("missing field: either `mem_backend` or `mem_file_path` is required");
    if (has_file) {
        p.backend_path = required_path(j, where, "mem_file_path");
        p.mem_file_path_used = true;
    } else {
        const auto& b = j["mem_backend"];
        if (!b.is_object()) throw ConfigError("snapshot/load.mem_backend must be a JSON object");
        reject_unknown(b, "snapshot/load.mem_backend", {"backend_type", "backend_path"});
        p.backend_path = required_path(b, "snapshot/load.mem_backend", "backend_path");
        auto t = b.find("backend_type");
        if (t == b.end()) throw ConfigError("snapshot/load.mem_backend: missing field `backend_type`");
        if (!t->is_string()) throw ConfigError("snapshot/load.mem_backend.backend_type must be \"File\" or \"Uffd\"");
        const auto s = t->get<std::string>();
        if (s == "File") p.backend = MemBackend::File;
        else if (s == "Uffd") p.backend = MemBackend::Uffd;
        else throw ConfigError("unknown mem_backend.backend_type \"" + s + "\" (File or Uffd)");
    }
    p.enable_diff_snapshots_used = optional_bool(j, where, "enable_diff_snapshots");
    p.track_dirty_pages = optional_bool(j, where, "track_dirty_pages") || p.enable_diff_snapshots_used;
    p.resume_vm = optional_bool(j, where, "resume_vm");
    p.clock_realtime = optional_bool(j, where, "clock_realtime");
    if (auto n = j.find("network_overrides"); n != j.end() && !n->is_null()) {
        if (!n->is_array()) throw ConfigError("snapshot/load.network_overrides must be an array");
        for (const auto& o : *n) {
            if (!o.is_object()) throw ConfigError("snapshot/load.network_overrides entries must be JSON objects");
            reject_unknown(o, "snapshot/load.network_overrides", {"iface_id", "host_dev_name"});
            auto id = required_path(o, "snapshot/load.network_overrides", "iface_id");
            auto dev = required_path(o, "snapshot/load.network_overrides", "host_dev_name");
            for (const auto& [seen, unused] : p.network_overrides)
                if (seen == id) throw ConfigError("snapshot/load.network_overrides names iface_id \"" + id + "\" twice");
            p.network_overrides.emplace_back(std::move(id), std::move(dev));
        }
    }
    if (auto v = j.find("vsock_override"); v != j.end() && !v->is_null()) {
        if (!v->is_object()) throw ConfigError("snapshot/load.vsock_override must be a JSON object");
        reject_unknown(*v, "snapshot/load.vsock_override", {"uds_path"});
        p.vsock_uds_path = required_path(*v, "snapshot/load.vsock_override", "uds_path");
    }
    return p;
}

} // namespace ember
