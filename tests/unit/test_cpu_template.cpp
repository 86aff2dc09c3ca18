// CPU templates: the bitmap and number parsers and the CustomCpuTemplate JSON schema
// (api/cpu_config), the static templates' bits and vendor rules and the modifiers applied to a
// CPUID table and MSR values (vmm/arch/x86_64/cpu_template), and the API around them.

#include "test_util.hpp"

#include "api/config.hpp"
#include "api/controller.hpp"
#include "api/cpu_config.hpp"
#include "api/routes.hpp"
#include "vmm/arch/x86_64/cpu_template.hpp"

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <unistd.h>

using namespace ember;
using nlohmann::json;

namespace {

kvm_cpuid_entry2 entry(std::uint32_t fn, std::uint32_t idx, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d,
                       std::uint32_t flags = 0) {
    kvm_cpuid_entry2 e{};
    e.function = fn;
    e.index = idx;
    e.flags = flags;
    e.eax = a;
    e.ebx = b;
    e.ecx = c;
    e.edx = d;
    return e;
}

const kvm_cpuid_entry2& find(const std::vector<kvm_cpuid_entry2>& t, std::uint32_t fn, std::uint32_t idx) {
    auto it = std::find_if(t.begin(), t.end(), [&](const auto& e) { return e.function == fn && e.index == idx; });
    REQUIRE(it != t.end());
    return *it;
}

// Every leaf the static templates touch, all bits set, as a worst case of what KVM may report.
std::vector<kvm_cpuid_entry2> all_ones() {
    const std::uint32_t F = 0xffff'ffff;
    return {entry(0x1, 0, 0x00a00f11, F, F, F),          entry(0x7, 0, F, F, F, F, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            entry(0xd, 0, F, F, F, F, KVM_CPUID_FLAG_SIGNIFCANT_INDEX), entry(0xd, 1, F, F, F, F, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            entry(0x8000'0001, 0, F, F, F, F),            entry(0x8000'0008, 0, F, F, F, F),
            entry(0x4000'0000, 0, 1, 2, 3, 4)};
}

HostCpu amd() { return {"AuthenticAMD", 0x00a00f11}; }   // Milan
HostCpu intel() { return {"GenuineIntel", 0x00050657}; } // Cascade Lake

} // namespace

TEST_CASE("cpu template: bitmap strings set, clear and keep bits") {
    auto f = parse_bitmap("0b0101xxxx", 8, "b");
    CHECK(f.filter == 0xf0);
    CHECK(f.value == 0x50);
    f = parse_bitmap("0b0_101_xx_xx", 8, "b"); // separators are ignored
    CHECK(f.filter == 0xf0);
    CHECK(f.value == 0x50);
    f = parse_bitmap("1x0", 32, "b"); // "0b" is optional, the last digit is bit 0
    CHECK(f.filter == 0b101);
    CHECK(f.value == 0b100);
    f = parse_bitmap("0b", 32, "b");
    CHECK(f.filter == 0);
    f = parse_bitmap(std::string(64, '1'), 64, "b");
    CHECK(f.filter == ~std::uint64_t{0});
    CHECK(f.value == ~std::uint64_t{0});
    CHECK(BitFilter<std::uint32_t>{0xf0, 0x50}.apply(0xabcd'12ff) == 0xabcd'125f);

    CHECK_CONFIG_ERROR(parse_bitmap("0b0_x2_1", 32, "here"), "unknown character");
    CHECK_CONFIG_ERROR(parse_bitmap("0b0_x2_1", 32, "here"), "here");
    CHECK_CONFIG_ERROR(parse_bitmap("0bX", 32, "b"), "unknown character");
    CHECK_CONFIG_ERROR(parse_bitmap(std::string(33, '0'), 32, "b"), "too long");
    CHECK_CONFIG_ERROR(parse_bitmap("0b" + std::string(65, 'x'), 64, "b"), "too long");
    CHECK(parse_bitmap("0b" + std::string(32, '0') + "____", 32, "b").filter == 0xffff'ffff);

    CHECK(format_bitmap({0xf0, 0x50}, 8) == "0b0101xxxx");
    CHECK(parse_bitmap(format_bitmap({0x8000'0001, 0x1}, 32), 32, "b") == BitFilter<std::uint64_t>{0x8000'0001, 0x1});
}

TEST_CASE("cpu template: leaf, subleaf and addr numbers are hex, binary or decimal strings") {
    CHECK(parse_template_u32("0x80000001", "n") == 0x8000'0001);
    CHECK(parse_template_u32("0b1000101", "n") == 69);
    CHECK(parse_template_u32("266", "n") == 266);
    CHECK(parse_template_u32("0xffffffff", "n") == 0xffff'ffff);
    CHECK_CONFIG_ERROR(parse_template_u32("0x100000000", "n"), "32 bits");
    CHECK_CONFIG_ERROR(parse_template_u32("0jj0", "leaf"), "leaf");
    CHECK_CONFIG_ERROR(parse_template_u32("0b102", "n"), "as a number");
    CHECK_CONFIG_ERROR(parse_template_u32("", "n"), "as a number");
    CHECK_CONFIG_ERROR(parse_template_u32("0x", "n"), "as a number");
    CHECK_CONFIG_ERROR(parse_template_u32("-1", "n"), "as a number");
}

TEST_CASE("cpu template: Firecracker's CustomCpuTemplate JSON parses and round-trips") {
    const auto t = parse_cpu_config_text(R"({
      "kvm_capabilities": ["171", "!172"],
      "cpuid_modifiers": [{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0,
                           "modifiers": [{"register": "ecx", "bitmap": "0bxx1xxxxxxxxxxxxxxxxxxxxx0xxxxxx0"}]},
                          {"leaf": "0x7", "subleaf": "0", "flags": 1, "ignored": true,
                           "modifiers": [{"register": "ebx", "bitmap": "0b1"}, {"register": "edx", "bitmap": "0b0x"}]}],
      "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0000000000000000000000000000000000000000000000000000110001001100"}]
    })");
    REQUIRE(t.kvm_capabilities.size() == 2);
    CHECK(t.kvm_capabilities[0] == KvmCapabilityRule{171, true});
    CHECK(t.kvm_capabilities[1] == KvmCapabilityRule{172, false});
    CHECK(added_kvm_caps(t) == std::vector<std::uint32_t>{171});
    CHECK(removed_kvm_caps(t) == std::vector<std::uint32_t>{172});
    REQUIRE(t.cpuid_modifiers.size() == 2);
    CHECK(t.cpuid_modifiers[0].leaf == 0x8000'0001);
    REQUIRE(t.cpuid_modifiers[0].modifiers.size() == 1);
    CHECK(t.cpuid_modifiers[0].modifiers[0].reg == CpuidRegister::Ecx);
    CHECK(t.cpuid_modifiers[0].modifiers[0].bitmap == BitFilter<std::uint32_t>{0x2000'0081, 0x2000'0000});
    CHECK(t.cpuid_modifiers[1].flags == 1);
    CHECK(t.cpuid_modifiers[1].modifiers[1].reg == CpuidRegister::Edx);
    CHECK(t.cpuid_modifiers[1].modifiers[1].bitmap == BitFilter<std::uint32_t>{0b10, 0});
    REQUIRE(t.msr_modifiers.size() == 1);
    CHECK(t.msr_modifiers[0].addr == 0x10a);
    CHECK(t.msr_modifiers[0].bitmap == BitFilter<std::uint64_t>{~std::uint64_t{0}, 0xc4c});

    const json shown = to_json(t);
    CHECK(shown.at("cpuid_modifiers").at(0).at("leaf") == "0x80000001");
    CHECK(shown.at("kvm_capabilities").at(1) == "!172");
    CHECK(parse_cpu_config(shown) == t);
    CHECK(parse_cpu_config_text("{}") == CustomCpuTemplate{});
}

TEST_CASE("cpu template: bad JSON is refused naming the field") {
    auto bad = [](const std::string& text) { return parse_cpu_config_text(text); };
    CHECK_CONFIG_ERROR(bad("{"), "not valid JSON");
    CHECK_CONFIG_ERROR(bad("[]"), "must be a JSON object");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifier": []})"), "unknown field \"cpuid_modifier\"");
    CHECK_CONFIG_ERROR(bad(R"({"reg_modifiers": []})"), "aarch64");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifiers": {}})"), "cpu-config.cpuid_modifiers must be a JSON array");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifiers": [{"subleaf": "0x0", "flags": 0, "modifiers": []}]})"),
                       "cpuid_modifiers[0]: missing required field \"leaf\"");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifiers": [{"leaf": 1, "subleaf": "0x0", "flags": 0, "modifiers": []}]})"),
                       "cpuid_modifiers[0].leaf must be a string");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": -1, "modifiers": []}]})"),
                       "flags must be a non-negative integer");
    CHECK_CONFIG_ERROR(bad(R"({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0}]})"),
                       "missing required field \"modifiers\"");
    CHECK_CONFIG_ERROR(
        bad(R"({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ekx", "bitmap": "0b1"}]}]})"),
        "Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]");
    CHECK_CONFIG_ERROR(
        bad(R"({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "eax", "bitmap": "0b12"}]}]})"),
        "modifiers[0].bitmap");
    CHECK_CONFIG_ERROR(bad(R"({"msr_modifiers": [{"addr": "0jj0", "bitmap": "0b1"}]})"), "msr_modifiers[0].addr");
    CHECK_CONFIG_ERROR(bad(R"({"msr_modifiers": [{"addr": "0x10a"}]})"), "missing required field \"bitmap\"");
    CHECK_CONFIG_ERROR(bad(R"({"kvm_capabilities": ["abc"]})"), "kvm_capabilities[0]");
    CHECK_CONFIG_ERROR(bad(R"({"kvm_capabilities": ["!"]})"), "as a kvm capability");
    CHECK_CONFIG_ERROR(bad(R"({"kvm_capabilities": ["99999999999"]})"), "as a kvm capability");
    CHECK_CONFIG_ERROR(bad(R"({"kvm_capabilities": [171]})"), "must be a string");
}

TEST_CASE("cpu template: static template names; V1N1 is refused on x86_64") {
    CHECK(parse_static_cpu_template("T2A", "t") == StaticCpuTemplate::T2A);
    CHECK(parse_static_cpu_template("T2CL", "t") == StaticCpuTemplate::T2CL);
    CHECK(parse_static_cpu_template("C3", "t") == StaticCpuTemplate::C3);
    CHECK_FALSE(parse_static_cpu_template("None", "t").has_value());
    CHECK_CONFIG_ERROR(parse_static_cpu_template("V1N1", "machine-config.cpu_template"), "unknown variant \"V1N1\"");
    CHECK_CONFIG_ERROR(parse_static_cpu_template("none", "t"), "expected one of C3, T2, T2S, None, T2CL, T2A");
}

TEST_CASE("cpu template: vendor rules as Firecracker's get_cpu_template") {
    const char* mismatch = "CPU vendor mismatched between actual CPU and CPU template.";
    for (auto t : {StaticCpuTemplate::C3, StaticCpuTemplate::T2, StaticCpuTemplate::T2S, StaticCpuTemplate::T2CL}) {
        CHECK_CONFIG_ERROR(resolve_cpu_template(CpuTemplateChoice{t}, amd()), mismatch);
        CHECK(resolve_cpu_template(CpuTemplateChoice{t}, intel()) == static_template_modifiers(t));
        CHECK_CONFIG_ERROR(resolve_cpu_template(CpuTemplateChoice{t}, HostCpu{"HygonGenuine", 0}), mismatch);
    }
    CHECK_CONFIG_ERROR(resolve_cpu_template(CpuTemplateChoice{StaticCpuTemplate::T2A}, intel()), mismatch);
    CHECK(resolve_cpu_template(CpuTemplateChoice{StaticCpuTemplate::T2A}, amd()) ==
          static_template_modifiers(StaticCpuTemplate::T2A));
    // No template and a custom one apply on any vendor.
    CHECK(resolve_cpu_template(CpuTemplateChoice{}, amd()) == CustomCpuTemplate{});
    CustomCpuTemplate custom;
    custom.msr_modifiers.push_back({0x10, {1, 1}});
    CHECK(resolve_cpu_template(CpuTemplateChoice{custom}, intel()) == custom);
    // Firecracker's model lists (warned about, not refused, by Ember).
    CHECK(cpu_model_listed(StaticCpuTemplate::T2A, 0x00a00f11));
    CHECK_FALSE(cpu_model_listed(StaticCpuTemplate::T2A, 0x00000663)); // QEMU "max" under TCG
    CHECK(cpu_model_listed(StaticCpuTemplate::T2S, 0x00050654));
    CHECK_FALSE(cpu_model_listed(StaticCpuTemplate::T2S, 0x000606a6));
    CHECK(cpu_model_listed(StaticCpuTemplate::T2CL, 0x000606a6));
}

TEST_CASE("cpu template: T2A applied to an all-ones CPUID table gives Firecracker's bits") {
    const auto out = apply_cpuid_modifiers(all_ones(), static_template_modifiers(StaticCpuTemplate::T2A));
    const auto& l1 = find(out, 0x1, 0);
    CHECK(l1.eax == 0x0003'06f2);         // family 6, model 0x3f, stepping 2
    CHECK(l1.ecx == 0xfffb'3203);         // DTES64 ... DCA cleared
    CHECK(l1.edx == 0x179b'ffff);         // PSN, DS, ACPI, SS, TM, IA-64, PBE cleared
    const auto& l7 = find(out, 0x7, 0);
    CHECK(l7.ebx == 0x0010'27eb);         // RDSEED (18), ADX (19), SHA (29) ... cleared; ERMS (9) set
    CHECK((l7.ebx & (1u << 9)) != 0);
    CHECK((l7.ebx & (1u << 18 | 1u << 19 | 1u << 29)) == 0);
    CHECK(l7.ecx == 0xbfbe'a0a1);
    CHECK(l7.edx == 0xffff'fee3);
    CHECK(l7.flags == KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
    CHECK(find(out, 0xd, 0).eax == 0xffff'fd07);
    CHECK(find(out, 0xd, 1).eax == 0xffff'fff1);
    const auto& e1 = find(out, 0x8000'0001, 0);
    CHECK(e1.ecx == 0xdfff'fe3b);         // SVM, SSE4A, MisAlignSse, 3DNowPrefetch, MONITORX cleared
    CHECK(e1.edx == 0xf9bf'ffff);         // MmxExt, FFXSR, Page1GB cleared
    CHECK(e1.eax == 0xffff'ffff);         // registers without a modifier are untouched
    CHECK(find(out, 0x8000'0008, 0).ebx == 0xffff'fdfe); // CLZERO, WBNOINVD cleared
    const auto& kvm = find(out, 0x4000'0000, 0);
    CHECK((kvm.eax == 1 && kvm.ebx == 2 && kvm.ecx == 3 && kvm.edx == 4));

    // Bits a template keeps pass through from KVM's table: all-zero input keeps only forced bits.
    std::vector<kvm_cpuid_entry2> zeros = all_ones();
    for (auto& e : zeros) e.eax = e.ebx = e.ecx = e.edx = 0;
    const auto z = apply_cpuid_modifiers(zeros, static_template_modifiers(StaticCpuTemplate::T2A));
    CHECK(find(z, 0x1, 0).edx == 0x1080);                 // MCE, MTRR
    CHECK(find(z, 0x7, 0).ebx == 0x200);                  // ERMS
    CHECK(find(z, 0x8000'0008, 0).ebx == 0x001c'0004);    // RstrFpErrPtrs, IbrsPreferred, IbrsSameMode, EferLmsle
}

TEST_CASE("cpu template: each static template changes only its leaves; C3 hides AVX2") {
    for (auto t : {StaticCpuTemplate::C3, StaticCpuTemplate::T2, StaticCpuTemplate::T2S, StaticCpuTemplate::T2CL,
                   StaticCpuTemplate::T2A}) {
        const auto tmpl = static_template_modifiers(t);
        CHECK_FALSE(tmpl.cpuid_modifiers.empty());
        for (const auto& m : tmpl.cpuid_modifiers)
            for (const auto& r : m.modifiers) CHECK((r.bitmap.value & ~r.bitmap.filter) == 0);
        const auto out = apply_cpuid_modifiers(all_ones(), tmpl);
        CHECK(find(out, 0x4000'0000, 0).eax == 1);
    }
    const auto c3 = apply_cpuid_modifiers(all_ones(), static_template_modifiers(StaticCpuTemplate::C3));
    CHECK((find(c3, 0x7, 0).ebx & (1u << 5)) == 0);   // AVX2
    CHECK((find(c3, 0x1, 0).ecx & (1u << 12)) == 0);  // FMA
    CHECK(find(c3, 0x1, 0).eax == 0x0003'06e4);
    CHECK(find(c3, 0x8000'0008, 0).ebx == 0xffff'ffff); // C3 has no 0x80000008 modifier
    CHECK(static_template_modifiers(StaticCpuTemplate::T2S).msr_modifiers.at(0).addr == 0x10a);
    CHECK(static_template_modifiers(StaticCpuTemplate::T2CL).msr_modifiers.at(0).bitmap.filter == 0xffff'ffff'e2f5'1e00);
    CHECK(static_template_modifiers(StaticCpuTemplate::T2A).msr_modifiers.empty());
}

TEST_CASE("cpu template: a modifier for a leaf KVM lacks is refused; flags are replaced") {
    CustomCpuTemplate t;
    t.cpuid_modifiers.push_back({0x8000'0021, 0, 0, {{CpuidRegister::Eax, {1, 0}}}});
    CHECK_CONFIG_ERROR(apply_cpuid_modifiers(all_ones(), t),
                       "Template changes a CPUID entry not supported by KVM: Leaf: 80000021, Subleaf: 0");
    t.cpuid_modifiers[0] = {0xd, 2, 1, {}};
    CHECK_CONFIG_ERROR(apply_cpuid_modifiers(all_ones(), t), "Subleaf: 2");
    t.cpuid_modifiers[0] = {0x8000'0001, 0, 1, {{CpuidRegister::Ecx, {0x4, 0}}, {CpuidRegister::Ecx, {0x1, 0x1}}}};
    std::vector<kvm_cpuid_entry2> in = {entry(0x8000'0001, 0, 0, 0, 0xf0, 0)};
    const auto out = apply_cpuid_modifiers(in, t);
    CHECK(out.at(0).ecx == 0xf1); // modifiers of one register apply in order
    CHECK(out.at(0).flags == 1);
}

TEST_CASE("cpu template: MSR modifiers apply to the vCPU's values") {
    std::vector<kvm_msr_entry> cur(2);
    cur[0].index = 0x10a;
    cur[0].data = 0xffff'ffff'ffff'ffff;
    cur[1].index = 0x10;
    cur[1].data = 0x1234;
    const auto out = apply_msr_modifiers(cur, static_template_modifiers(StaticCpuTemplate::T2S).msr_modifiers);
    CHECK(out[0].data == 0x0408'0c4c);
    CHECK(out[1].data == 0x1234);
    const auto cl = apply_msr_modifiers(cur, static_template_modifiers(StaticCpuTemplate::T2CL).msr_modifiers);
    CHECK(cl[0].data == 0x1d0a'e1ff); // the pass-through mitigation bits only
}

TEST_CASE("cpu template: machine-config, PUT /cpu-config and GET /vm/config") {
    boost::asio::io_context io;
    RunOptions opts;
    opts.kvm_path = "/nonexistent/kvm";
    api::Controller ctl(io, "test-vm", opts, 4096, nullptr);
    auto call = [&](const std::string& m, const std::string& path, const std::string& body = "") {
        auto r = api::route(m, path, body);
        if (auto* resp = std::get_if<api::Response>(&r)) {
            ctl.count_rejected(m, path); // as the HTTP server does
            return *resp;
        }
        return ctl.handle(std::get<api::Action>(r));
    };
    auto get = [&](const std::string& path) { return json::parse(call("GET", path).body); };

    CHECK(call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2A"})").status == 204);
    CHECK(get("/machine-config").at("cpu_template") == "T2A");
    CHECK(get("/vm/config").at("machine-config").at("cpu_template") == "T2A");
    CHECK(get("/vm/config").at("cpu-config").is_null());
    // A later machine-config without cpu_template keeps it; "None" clears it.
    CHECK(call("PATCH", "/machine-config", R"({"vcpu_count": 2})").status == 204);
    CHECK(get("/machine-config").at("cpu_template") == "T2A");
    CHECK(call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128})").status == 204);
    CHECK(get("/machine-config").at("cpu_template") == "T2A");
    CHECK(call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"})").status == 204);
    CHECK_FALSE(get("/machine-config").contains("cpu_template"));

    // V1N1 and a bad custom template: 400 with the reason, nothing changed.
    auto r = call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "V1N1"})");
    CHECK(r.status == 400);
    CHECK_THAT(json::parse(r.body).at("fault_message").get<std::string>(), Catch::Contains("V1N1"));
    r = call("PUT", "/cpu-config", R"({"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "e", "bitmap": "0b1"}]}]})");
    CHECK(r.status == 400);
    CHECK_THAT(json::parse(r.body).at("fault_message").get<std::string>(), Catch::Contains("Invalid CPUID register"));
    CHECK(call("GET", "/cpu-config").status == 400);
    CHECK(get("/vm/config").at("cpu-config").is_null());

    // A custom template replaces the static one (and the other way round), as in Firecracker.
    CHECK(call("PUT", "/machine-config", R"({"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2"})").status == 204);
    const std::string custom =
        R"({"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [{"register": "ebx", "bitmap": "0bxxxxxxxxxxxxx0xxxxxxxxxxxxxxxxxx"}]}]})";
    CHECK(call("PUT", "/cpu-config", custom).status == 204);
    CHECK_FALSE(get("/machine-config").contains("cpu_template"));
    const json vc = get("/vm/config");
    CHECK(parse_cpu_config(vc.at("cpu-config")) == parse_cpu_config_text(custom));
    CHECK(call("PATCH", "/machine-config", R"({"mem_size_mib": 256})").status == 204);
    CHECK(get("/vm/config").at("cpu-config").is_object());
    CHECK(call("PATCH", "/machine-config", R"({"cpu_template": "C3"})").status == 204);
    CHECK(get("/vm/config").at("cpu-config").is_null());
    CHECK(get("/machine-config").at("cpu_template") == "C3");

    // The vendor rule applies at InstanceStart, before anything is opened.
    const bool on_amd = host_cpu().vendor == "AuthenticAMD";
    CHECK(call("PATCH", "/machine-config", on_amd ? R"({"cpu_template": "T2"})" : R"({"cpu_template": "T2A"})").status == 204);
    CHECK(call("PUT", "/boot-source", R"({"kernel_image_path": "/proc/self/exe"})").status == 204);
    r = call("PUT", "/actions", R"({"action_type": "InstanceStart"})");
    CHECK(r.status == 400);
    CHECK_THAT(json::parse(r.body).at("fault_message").get<std::string>(),
               Catch::Contains("CPU vendor mismatched between actual CPU and CPU template."));
    CHECK_FALSE(ctl.started());
    const json mt = json::parse(ctl.metrics_line());
    CHECK(mt.at("put_api_requests").at("cpu_cfg_count") == 1);
    CHECK(mt.at("put_api_requests").at("cpu_cfg_fails") == 1);
}

TEST_CASE("cpu template: the config file's cpu-config is a template file (or inline) and beats cpu_template") {
    char path[] = "/tmp/ember-cpu-config-XXXXXX";
    const int fd = ::mkstemp(path);
    REQUIRE(fd >= 0);
    const std::string tmpl = R"({"msr_modifiers": [{"addr": "0x10", "bitmap": "0b1"}]})";
    REQUIRE(::write(fd, tmpl.data(), tmpl.size()) == static_cast<ssize_t>(tmpl.size()));
    ::close(fd);
    json doc = {{"boot-source", {{"kernel_image_path", "/vmlinux"}}},
                {"machine-config", {{"vcpu_count", 1}, {"mem_size_mib", 128}, {"cpu_template", "T2A"}}},
                {"cpu-config", path}};
    VmConfig c = parse_config_file(doc.dump(), 4096);
    REQUIRE(std::holds_alternative<CustomCpuTemplate>(c.machine.cpu_template));
    CHECK(std::get<CustomCpuTemplate>(c.machine.cpu_template).msr_modifiers.at(0).addr == 0x10);
    doc["cpu-config"] = json::parse(tmpl);
    c = parse_config_file(doc.dump(), 4096);
    CHECK(std::get<CustomCpuTemplate>(c.machine.cpu_template) == parse_cpu_config_text(tmpl));
    doc["cpu-config"] = nullptr;
    c = parse_config_file(doc.dump(), 4096);
    CHECK(std::get<StaticCpuTemplate>(c.machine.cpu_template) == StaticCpuTemplate::T2A);
    ::unlink(path);
    doc["cpu-config"] = path;
    CHECK_CONFIG_ERROR(parse_config_file(doc.dump(), 4096), "cannot read the CPU template file");
    doc["cpu-config"] = json::parse(R"({"msr_modifiers": [{"addr": "0x10"}]})");
    CHECK_CONFIG_ERROR(parse_config_file(doc.dump(), 4096), "missing required field \"bitmap\"");
}
