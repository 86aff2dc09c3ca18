// libFuzzer target: API routing and the configuration schema behind it.
// Input: first byte picks the method, then the target up to '\n', then the body.
// Invariants checked: no crash, no sanitizer report, every refusal is a 400 whose body is JSON
// with a fault_message, every accepted machine-config stays within its documented bounds, and
// every accepted config file round-trips through its GET /vm/config rendering.

#include "api/config.hpp"
#include "api/routes.hpp"
#include "vmm/base/error.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    static const char* methods[] = {"GET", "PUT", "PATCH", "DELETE", "POST"};
    const std::string method = methods[data[0] % 5];
    const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);
    const auto nl = rest.find('\n');
    const std::string target = nl == std::string::npos ? rest : rest.substr(0, nl);
    const std::string body = nl == std::string::npos ? std::string() : rest.substr(nl + 1);

    auto r = ember::api::route(method, target, body);
    if (auto* resp = std::get_if<ember::api::Response>(&r)) {
        if (resp->status != 400) std::abort();
        if (!nlohmann::json::parse(resp->body).contains("fault_message")) std::abort();
        return 0;
    }
    const auto& action = std::get<ember::api::Action>(r);
    const nlohmann::json* mc = nullptr;
    if (auto* p = std::get_if<ember::api::PutMachineConfig>(&action)) mc = &p->body;
    if (auto* p = std::get_if<ember::api::PatchMachineConfig>(&action)) mc = &p->body;
    if (mc) {
        try {
            auto m = ember::parse_machine_config(*mc, 4096);
            if (m.vcpu_count < 1 || m.vcpu_count > ember::MAX_VCPUS || m.mem_size_mib < 1 || m.mem_size_mib > 4096)
                std::abort();
            (void)ember::api::Response::ok_json(ember::to_json(m));
        } catch (const ember::ConfigError&) {
        }
    }
    // An accepted --config-file document renders (GET /vm/config's shape) to a document that
    // parses back to the same rendering.
    nlohmann::json rendered;
    try {
        rendered = ember::to_json(ember::parse_config_file(body, 4096));
    } catch (const ember::ConfigError&) {
        return 0;
    }
    std::string text;
    try {
        text = rendered.dump();
    } catch (const nlohmann::json::exception&) {
        return 0; // invalid UTF-8 in a string: the API renders it lossily, so no round trip
    }
    if (ember::to_json(ember::parse_config_file(text, 4096)) != rendered) std::abort();
    return 0;
}
