// Per-vCPU boot state from vmm/x86_cpu.hpp: CPUID topology, MSRs, FPU, LAPIC LINT pins and
// registers. All pure functions over a synthetic "supported CPUID" table.

#include "vmm/arch/x86_64/kernel_loader.hpp"
#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/arch/x86_64/x86_cpu.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

using namespace ember;

namespace {

kvm_cpuid_entry2 leaf(std::uint32_t fn, std::uint32_t idx, std::uint32_t a, std::uint32_t b, std::uint32_t c, std::uint32_t d) {
    kvm_cpuid_entry2 e{};
    e.function = fn;
    e.index = idx;
    e.eax = a;
    e.ebx = b;
    e.ecx = c;
    e.edx = d;
    return e;
}

// Deterministic cache-leaf EAX: type, level, self-initialising, with junk in the topology fields
// that cpuid_for_vcpu must replace.
std::uint32_t cache_eax(std::uint32_t type, std::uint32_t level) {
    return type | (level << 5) | (1u << 8) | (0xfffu << 14) | (0x3fu << 26);
}

constexpr std::uint32_t LEAF1_EBX = 0xabcd'0800;   // old APIC id 0xab, count 0xcd, CLFLUSH 8
constexpr std::uint32_t LEAF1_ECX = 0x0000'0201;   // SSE3, SSSE3
constexpr std::uint32_t LEAF1_EDX = 0x1789'fbff | CPUID_1_EDX_HTT;
constexpr std::uint32_t EXT8_ECX = 0x0001'f0ff;    // junk NC and ApicIdSize, bit 16 kept

std::vector<kvm_cpuid_entry2> supported(bool with_kvm_leaf) {
    std::vector<kvm_cpuid_entry2> t = {
        leaf(0x0, 0, 0x1f, 0x756e6547, 0x6c65746e, 0x49656e69), // GenuineIntel
        leaf(0x1, 0, 0x000806f8, LEAF1_EBX, LEAF1_ECX, LEAF1_EDX),
        leaf(0x4, 0, cache_eax(1, 1), 0x01c0003f, 0x3f, 0),
        leaf(0x4, 1, cache_eax(2, 1), 0x01c0003f, 0x3f, 0),
        leaf(0x4, 2, cache_eax(3, 2), 0x01c0003f, 0x3ff, 0),
        leaf(0x4, 3, cache_eax(3, 3), 0x03c0003f, 0x7fff, 4),
        leaf(0x4, 4, 0x1234'5600, 0, 0, 0), // type 0: no cache, left alone
        leaf(0xb, 0, 0xdead, 0xbeef, 0xcafe, 0xf00d),
        leaf(0xb, 1, 0xdead, 0xbeef, 0xcafe, 0xf00d),
        leaf(0xb, 2, 0xdead, 0xbeef, 0xcafe, 0xf00d),
        leaf(0x1f, 0, 0xdead, 0xbeef, 0xcafe, 0xf00d),
        leaf(0x1f, 1, 0xdead, 0xbeef, 0xcafe, 0xf00d),
        leaf(0x8000'0000, 0, 0x8000'001f, 0, 0, 0),
        leaf(0x8000'0008, 0, 0x3030, 0, EXT8_ECX, 0),
        leaf(0x8000'001e, 0, 0xff, 0xffff, 0xff, 0),
    };
    if (with_kvm_leaf) {
        kvm_cpuid_entry2 k = leaf(KVM_CPUID_SIGNATURE_LEAF, 0, 0x4000'0010, 0, 0, 0);
        std::memcpy(&k.ebx, "KVMK", 4);
        std::memcpy(&k.ecx, "VMKV", 4);
        std::memcpy(&k.edx, "M\0\0\0", 4);
        t.push_back(k);
    }
    return t;
}

const kvm_cpuid_entry2& find(const std::vector<kvm_cpuid_entry2>& t, std::uint32_t fn, std::uint32_t idx = 0) {
    auto it = std::find_if(t.begin(), t.end(), [&](const kvm_cpuid_entry2& e) { return e.function == fn && e.index == idx; });
    REQUIRE(it != t.end());
    return *it;
}

std::size_t count_fn(const std::vector<kvm_cpuid_entry2>& t, std::uint32_t fn) {
    return static_cast<std::size_t>(
        std::count_if(t.begin(), t.end(), [&](const kvm_cpuid_entry2& e) { return e.function == fn; }));
}

std::string signature(const kvm_cpuid_entry2& e) {
    char s[13] = {};
    std::memcpy(s, &e.ebx, 4);
    std::memcpy(s + 4, &e.ecx, 4);
    std::memcpy(s + 8, &e.edx, 4);
    return s;
}

std::uint32_t lapic_reg(const kvm_lapic_state& l, unsigned off) {
    std::uint32_t v;
    std::memcpy(&v, l.regs + off, 4);
    return v;
}
void set_lapic_reg(kvm_lapic_state& l, unsigned off, std::uint32_t v) { std::memcpy(l.regs + off, &v, 4); }

} // namespace

// ---------------------------------------------------------------------------------------------
// CPUID

TEST_CASE("CPUID leaf 1: APIC id, logical count, hypervisor and TSC-deadline bits") {
    const unsigned vcpus = GENERATE(1u, 2u, 5u, 32u);
    CAPTURE(vcpus);
    const CpuTopology topo{vcpus, false};
    for (unsigned i = 0; i < vcpus; ++i) {
        CAPTURE(i);
        const auto t = cpuid_for_vcpu(supported(false), topo, i);
        const auto& l1 = find(t, 0x1);
        CHECK(l1.ebx >> 24 == i);
        CHECK(((l1.ebx >> 16) & 0xff) == vcpus);
        CHECK((l1.ebx & 0xffff) == (LEAF1_EBX & 0xffff));
        CHECK((l1.ecx & CPUID_1_ECX_HYPERVISOR) != 0);
        CHECK((l1.ecx & CPUID_1_ECX_TSC_DEADLINE) != 0);
        CHECK((l1.ecx & LEAF1_ECX) == LEAF1_ECX); // supported bits kept
        CHECK(((l1.edx & CPUID_1_EDX_HTT) != 0) == (vcpus > 1));
        CHECK((l1.edx & ~CPUID_1_EDX_HTT) == (LEAF1_EDX & ~CPUID_1_EDX_HTT));
        CHECK(l1.eax == 0x000806f8);
    }
}

TEST_CASE("CPUID leaf 0xB: extended topology without SMT") {
    const CpuTopology topo{4, false};
    for (unsigned i = 0; i < 4; ++i) {
        CAPTURE(i);
        const auto t = cpuid_for_vcpu(supported(false), topo, i);
        for (std::uint32_t fn : {0xbu, 0x1fu}) {
            CAPTURE(fn);
            const auto& s0 = find(t, fn, 0);
            CHECK(s0.edx == i);
            CHECK(s0.eax == 0);           // no SMT bits
            CHECK(s0.ebx == 1);           // one thread per core
            CHECK(s0.ecx == 0x100);       // level type 1 (SMT), level number 0
            const auto& s1 = find(t, fn, 1);
            CHECK(s1.edx == i);
            CHECK(s1.eax == 2);           // 4 ids need 2 bits
            CHECK(s1.ebx == 4);
            CHECK(s1.ecx == 0x201);       // level type 2 (core), level number 1
        }
        const auto& s2 = find(t, 0xb, 2);
        CHECK(s2.eax == 0);
        CHECK(s2.ebx == 0);
        CHECK((s2.ecx & 0xff00) == 0); // invalid level terminates the enumeration
        CHECK((s2.ecx & 0xff) == 2);
        CHECK(s2.edx == i);
    }
}

TEST_CASE("CPUID topology with SMT: two threads per core") {
    const CpuTopology topo{4, true};
    REQUIRE(topo.threads_per_core() == 2);
    for (unsigned i = 0; i < 4; ++i) {
        CAPTURE(i);
        const auto t = cpuid_for_vcpu(supported(false), topo, i);
        const auto& s0 = find(t, 0xb, 0);
        CHECK(s0.eax == 1); // shift by 1 to get the core id
        CHECK(s0.ebx == 2);
        CHECK(s0.edx == i);
        const auto& s1 = find(t, 0xb, 1);
        CHECK(s1.eax == 2);
        CHECK(s1.ebx == 4);
        // AMD extended APIC / compute unit leaf.
        const auto& amd = find(t, 0x8000'001e);
        CHECK(amd.eax == i);
        CHECK(((amd.ebx >> 8) & 0xff) == 1); // threads per compute unit - 1
        CHECK((amd.ebx & 0xff) == i / 2);    // compute unit (core) id
        CHECK(amd.ecx == 0);
        // Deterministic cache parameters: L1/L2 shared by the two threads, L3 by all.
        const auto& l1d = find(t, 0x4, 0);
        CHECK(((l1d.eax >> 14) & 0xfff) == 1);
        CHECK((l1d.eax >> 26) == 1); // 2 cores - 1
        const auto& l3 = find(t, 0x4, 3);
        CHECK(((l3.eax >> 14) & 0xfff) == 3);
        CHECK((l3.eax >> 26) == 1);
    }
    // A single vCPU with smt requested is still one thread.
    CHECK(CpuTopology{1, true}.threads_per_core() == 1);
}

TEST_CASE("CPUID leaf 4 without SMT: caches per core, L3 shared") {
    const CpuTopology topo{8, false};
    const auto in = supported(false);
    const auto t = cpuid_for_vcpu(in, topo, 3);
    for (std::uint32_t sub = 0; sub < 3; ++sub) {
        CAPTURE(sub);
        const auto& c = find(t, 0x4, sub);
        CHECK(((c.eax >> 14) & 0xfff) == 0);
        CHECK((c.eax >> 26) == 7);
        CHECK((c.eax & 0x3ff) == (find(in, 0x4, sub).eax & 0x3ff)); // type, level, flags kept
        CHECK(c.ebx == find(in, 0x4, sub).ebx);                     // geometry untouched
    }
    CHECK(((find(t, 0x4, 3).eax >> 14) & 0xfff) == 7);
    CHECK(find(t, 0x4, 4).eax == 0x1234'5600); // no cache: untouched
}

TEST_CASE("CPUID package id bits cover every APIC id") {
    for (unsigned vcpus = 1; vcpus <= 32; ++vcpus) {
        for (bool smt : {false, true}) {
            if (smt && vcpus > 1 && vcpus % 2) continue;
            CAPTURE(vcpus, smt);
            const auto t = cpuid_for_vcpu(supported(false), CpuTopology{vcpus, smt}, vcpus - 1);
            const std::uint32_t shift = find(t, 0xb, 1).eax;
            CHECK(((vcpus - 1) >> shift) == 0);                       // all vCPUs in package 0
            CHECK((shift == 0 || ((vcpus - 1) >> (shift - 1)) != 0)); // and no wider than needed
            const auto& ext8 = find(t, 0x8000'0008);
            CHECK((ext8.ecx & 0xff) == vcpus - 1);
            CHECK(((ext8.ecx >> 12) & 0xf) == shift);
            CHECK((ext8.ecx & ~0xf0ffu) == (EXT8_ECX & ~0xf0ffu));
        }
    }
}

TEST_CASE("CPUID: the KVM signature leaf is added when missing, not duplicated when present") {
    const CpuTopology topo{2, false};
    SECTION("missing") {
        const auto in = supported(false);
        const auto t = cpuid_for_vcpu(in, topo, 0);
        CHECK(t.size() == in.size() + 1);
        REQUIRE(count_fn(t, KVM_CPUID_SIGNATURE_LEAF) == 1);
        const auto& k = find(t, KVM_CPUID_SIGNATURE_LEAF);
        CHECK(signature(k) == "KVMKVMKVM");
        CHECK(k.eax >= KVM_CPUID_SIGNATURE_LEAF + 1); // covers the KVM features leaf
    }
    SECTION("present") {
        const auto in = supported(true);
        const auto t = cpuid_for_vcpu(in, topo, 1);
        CHECK(t.size() == in.size());
        CHECK(count_fn(t, KVM_CPUID_SIGNATURE_LEAF) == 1);
        const auto& k = find(t, KVM_CPUID_SIGNATURE_LEAF);
        CHECK(k.eax == 0x4000'0010); // KVM's own entry is kept as it is
        CHECK(signature(k) == "KVMKVMKVM");
    }
}

TEST_CASE("CPUID: unrelated leaves are untouched") {
    const auto in = supported(false);
    const auto t = cpuid_for_vcpu(in, CpuTopology{4, true}, 2);
    const auto& l0 = find(t, 0);
    CHECK(l0.eax == 0x1f);
    CHECK(l0.ebx == 0x756e6547);
    CHECK(find(t, 0x8000'0000).eax == 0x8000'001f);
    CHECK(find(t, 0x8000'0008).eax == 0x3030);
    // Entries keep their order.
    for (std::size_t i = 0; i < in.size(); ++i) {
        CHECK(t[i].function == in[i].function);
        CHECK(t[i].index == in[i].index);
    }
}

// ---------------------------------------------------------------------------------------------
// MSRs, FPU, LAPIC

TEST_CASE("boot MSRs enable MTRRs with write-back default and fast strings") {
    const auto m = boot_msrs();
    auto value = [&](std::uint32_t idx) -> std::uint64_t {
        auto it = std::find_if(m.begin(), m.end(), [&](const kvm_msr_entry& e) { return e.index == idx; });
        REQUIRE(it != m.end());
        return it->data;
    };
    CHECK(value(0x2ff) == ((1u << 11) | 6));
    CHECK(value(0x1a0) == 1);
    CHECK(value(0x10) == 0);          // TSC
    CHECK(value(0xc000'0082) == 0);   // LSTAR
    for (std::size_t i = 0; i < m.size(); ++i)
        for (std::size_t j = i + 1; j < m.size(); ++j) CHECK(m[i].index != m[j].index);
}

TEST_CASE("boot FPU state is the architectural default") {
    const kvm_fpu f = boot_fpu();
    CHECK(f.fcw == 0x37f);
    CHECK(f.mxcsr == 0x1f80);
    CHECK(f.fsw == 0);
}

TEST_CASE("LAPIC LINT0 becomes ExtINT and LINT1 NMI, other bits kept") {
    kvm_lapic_state l{};
    for (std::size_t i = 0; i < sizeof l.regs; ++i) l.regs[i] = static_cast<char>(i & 0x7f);
    set_lapic_reg(l, 0x350, 0x0001'a5ab); // masked, level, delivery mode 5, vector 0xab
    set_lapic_reg(l, 0x360, 0x0000'02cd); // delivery mode 2
    const kvm_lapic_state before = l;
    configure_lapic_lints(l);
    CHECK(lapic_reg(l, 0x350) == 0x0001'a7ab);
    CHECK(((lapic_reg(l, 0x350) >> 8) & 7) == 7);
    CHECK(lapic_reg(l, 0x360) == 0x0000'04cd);
    CHECK(((lapic_reg(l, 0x360) >> 8) & 7) == 4);
    // Nothing else changes.
    for (std::size_t i = 0; i < sizeof l.regs; ++i) {
        if ((i >= 0x350 && i < 0x354) || (i >= 0x360 && i < 0x364)) continue;
        if (l.regs[i] != before.regs[i]) FAIL("LAPIC byte " << i << " changed");
    }
}

// ---------------------------------------------------------------------------------------------
// Registers

TEST_CASE("boot registers for PVH and Linux64") {
    KernelImage k;
    SECTION("PVH") {
        k.protocol = BootProtocol::Pvh;
        k.entry = GuestAddr(0x1000c0);
        const kvm_regs r = boot_regs(k);
        CHECK(r.rip == 0x1000c0);
        CHECK(r.rbx == 0x6000);
        CHECK(r.rflags == 2);
        CHECK(r.rsi == 0);
    }
    SECTION("Linux64") {
        k.protocol = BootProtocol::Linux64;
        k.entry = GuestAddr(0x100200);
        const kvm_regs r = boot_regs(k);
        CHECK(r.rip == 0x100200);
        CHECK(r.rsi == 0x7000);
        CHECK(r.rsp == 0x8ff0);
        CHECK(r.rbp == 0x8ff0);
        CHECK(r.rflags == 2);
        CHECK(r.rbx == 0);
    }
}

TEST_CASE("boot segment registers: long mode with paging (Linux64)") {
    KernelImage k;
    k.protocol = BootProtocol::Linux64;
    kvm_sregs s{};
    s.cr0 = 0x6000'0010; // CD | NW | ET, as after reset
    boot_sregs(k, s);
    CHECK((s.cr0 & 1) == 1);                 // PE
    CHECK((s.cr0 & (1ull << 31)) != 0);      // PG
    CHECK(s.cr3 == 0x9000);
    CHECK((s.cr4 & (1ull << 5)) != 0);       // PAE
    CHECK((s.efer & (1ull << 8)) != 0);      // LME
    CHECK((s.efer & (1ull << 10)) != 0);     // LMA
    CHECK(s.gdt.base == layout::BOOT_GDT);
    CHECK(s.gdt.limit == 31);
    CHECK(s.idt.base == layout::BOOT_IDT);
    CHECK(s.idt.limit == 7);
    CHECK(s.cs.selector == 8);
    CHECK(s.cs.l == 1);
    CHECK(s.cs.db == 0);
    CHECK(s.ds.selector == 16);
    CHECK(s.ss.selector == 16);
    CHECK(s.es.selector == 16);
    CHECK(s.fs.selector == 16);
    CHECK(s.gs.selector == 16);
    CHECK(s.ds.type == 3);
    CHECK(s.tr.selector == 24);
    CHECK(s.tr.type == 0xb);
}

TEST_CASE("boot segment registers: 32-bit protected mode without paging (PVH)") {
    KernelImage k;
    k.protocol = BootProtocol::Pvh;
    kvm_sregs s{};
    // Start from long-mode state (as a re-used vCPU would have): PVH must clear it.
    s.cr0 = (1ull << 31) | 1;
    s.cr4 = 1ull << 5;
    s.efer = (1ull << 8) | (1ull << 10);
    boot_sregs(k, s);
    CHECK((s.cr0 & 1) == 1);             // PE
    CHECK((s.cr0 & (1ull << 31)) == 0);  // no PG
    CHECK((s.cr4 & (1ull << 5)) == 0);
    CHECK((s.efer & ((1ull << 8) | (1ull << 10))) == 0);
    CHECK(s.cs.selector == 8);
    CHECK(s.cs.db == 1);
    CHECK(s.cs.l == 0);
    CHECK(s.cs.limit == 0xffff'ffff);
    CHECK(s.ds.selector == 16);
    CHECK(s.ss.db == 1);
    CHECK(s.tr.selector == 24);
}
