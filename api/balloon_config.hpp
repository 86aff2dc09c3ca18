#pragma once
// Firecracker 1.16's balloon API (firecracker-api v1.16.1; vmm_config/balloon.rs and
// api_server/request/balloon.rs, serde structs with deny_unknown_fields):
//   PUT   /balloon                  Balloon {amount_mib, deflate_on_oom, stats_polling_interval_s?,
//                                   free_page_hinting?, free_page_reporting?}   pre-boot
//   GET   /balloon                  the configuration (the device's current one after boot)
//   PATCH /balloon                  BalloonUpdate {amount_mib}                 after boot
//   GET   /balloon/statistics       BalloonStats                               after boot
//   PATCH /balloon/statistics       BalloonStatsUpdate {stats_polling_interval_s} after boot
//   PATCH /balloon/hinting/start    BalloonStartCmd {acknowledge_on_stop?} (body optional)
//   GET   /balloon/hinting/status   BalloonHintingStatus {host_cmd, guest_cmd?}
//   PATCH /balloon/hinting/stop
// and the config file's "balloon" section (a Balloon object).

#include "devices/virtio/balloon/config.hpp"
#include "devices/virtio/balloon/request.hpp"

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace ember {

// Throws ConfigError with one line naming the field ("balloon.amount_mib must be ...").
BalloonConfig parse_balloon(const nlohmann::json& j);
nlohmann::json to_json(const BalloonConfig& c);
// GET /balloon/statistics: the four sizes always, each guest statistic once reported.
nlohmann::json to_json(const virtio::balloon::BalloonStatsView& s);
nlohmann::json to_json(const virtio::balloon::HintingStatus& s);

namespace api {

// One balloon request, parsed.
struct BalloonRequest {
    enum class Kind { Put, Get, Patch, GetStats, PatchStats, HintStart, HintStatus, HintStop };
    Kind kind = Kind::Get;
    BalloonConfig config;            // Put
    std::uint32_t amount_mib = 0;    // Patch
    std::uint16_t stats_interval = 0; // PatchStats
    bool acknowledge_on_stop = false; // HintStart
    bool is_get() const noexcept { return kind == Kind::Get || kind == Kind::GetStats || kind == Kind::HintStatus; }
    bool is_patch() const noexcept { return kind != Kind::Put && !is_get(); }
};

// Routes a request whose path starts with "/balloon". Throws ConfigError with the fault message.
BalloonRequest route_balloon(const std::string& method, const std::string& path, const std::string& body);

} // namespace api
} // namespace ember
