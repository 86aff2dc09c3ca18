// The balloon requests on the controller (Firecracker's rpc_interface.rs and
// vmm_config/balloon.rs): PUT before boot only; GET /balloon at any time; the runtime requests
// (PATCH, statistics, hinting) after boot only, with BalloonConfigError's messages.

#include "api/balloon_config.hpp"
#include "api/controller.hpp"
#include "devices/virtio/balloon/device.hpp"

namespace ember::api {
namespace {
const char* kNotFound = "No balloon device found.";
const char* kInactive = "Device is inactive, check if balloon driver is enabled in guest kernel.";
const char* kStatsOff = "Statistics for the balloon device are not enabled";
const char* kHintingOff = "Free page hinting for the balloon device is not enabled";
} // namespace

Response Controller::any_time(const BalloonRequest& r) {
    using K = BalloonRequest::Kind;
    if (r.kind == K::Put) {
        if (vm_) return Response::bad_request("The requested operation is not supported after starting the microVM.");
        cfg_.balloon = r.config; // Firecracker's BalloonBuilder::set: a second PUT replaces the first
        return Response::no_content();
    }
    std::shared_ptr<virtio::balloon::BalloonDevice> dev;
    if (vm_) dev = vm_->devices().find_first<virtio::balloon::BalloonDevice>();
    if (r.kind == K::Get) {
        if (dev) return Response::ok_json(to_json(dev->current_config()));
        if (!vm_ && cfg_.balloon) return Response::ok_json(to_json(*cfg_.balloon));
        return Response::bad_request(kNotFound);
    }
    if (!vm_) return Response::bad_request("The requested operation is not supported before starting the microVM.");
    if (!dev) return Response::bad_request(kNotFound);
    switch (r.kind) {
    case K::Patch:
        if (!dev->running()) return Response::bad_request(kInactive);
        dev->set_target_mib(r.amount_mib); // throws ConfigError for too many pages: a 400, nothing changed
        cfg_.balloon->amount_mib = r.amount_mib;
        return Response::no_content();
    case K::GetStats:
        if (dev->current_config().stats_polling_interval_s == 0) return Response::bad_request(kStatsOff);
        return Response::ok_json(to_json(dev->stats()));
    case K::PatchStats:
        dev->set_stats_interval(r.stats_interval); // throws Firecracker's InvalidStatsUpdate message
        cfg_.balloon->stats_polling_interval_s = r.stats_interval;
        return Response::no_content();
    case K::HintStart:
    case K::HintStatus:
    case K::HintStop:
        if (!dev->config().free_page_hinting) return Response::bad_request(kHintingOff);
        if (r.kind == K::HintStatus) return Response::ok_json(to_json(dev->hinting_status()));
        if (!dev->running()) return Response::bad_request(kInactive);
        if (r.kind == K::HintStart) dev->start_hinting(r.acknowledge_on_stop);
        else dev->stop_hinting();
        return Response::no_content();
    case K::Put:
    case K::Get: break;
    }
    return Response::bad_request(kNotFound);
}

} // namespace ember::api
