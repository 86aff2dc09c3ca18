#pragma once
// Firecracker's CPU template schema (x86_64 CustomCpuTemplate, firecracker-api v1.16.1 CpuConfig):
// the body of PUT /cpu-config and the file named by the config file's "cpu-config", and the
// machine-config.cpu_template names. Every error is a ConfigError naming the field.

#include "vmm/arch/x86_64/cpu_template.hpp"

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace ember {

// A tri-state bitmap string of at most `bits` digits, "0b" optional: '1' sets a bit, '0' clears
// it, 'x' keeps it, '_' is a separator; the last digit is bit 0 (templates.rs RegisterValueFilter).
BitFilter<std::uint64_t> parse_bitmap(std::string_view s, unsigned bits, const std::string& where);
// The bitmap string of `f` with `bits` digits ("0b" then 'x' where the filter is clear).
std::string format_bitmap(const BitFilter<std::uint64_t>& f, unsigned bits);
// A 32-bit number as a string: "0x..." hex, "0b..." binary or decimal (the swagger's CpuidLeafModifier).
std::uint32_t parse_template_u32(std::string_view s, const std::string& where);

CustomCpuTemplate parse_cpu_config(const nlohmann::json& j);
// parse_cpu_config() of JSON text (the request body or the template file).
CustomCpuTemplate parse_cpu_config_text(const std::string& text);
nlohmann::json to_json(const CustomCpuTemplate& t);

// machine-config.cpu_template: a static template, or nullopt for "None". V1N1 (aarch64) and
// unknown names are refused as Firecracker's x86_64 build refuses them.
std::optional<StaticCpuTemplate> parse_static_cpu_template(const std::string& name, const std::string& where);

} // namespace ember
