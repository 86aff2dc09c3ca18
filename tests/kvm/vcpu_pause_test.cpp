// Vcpu pause/save on real KVM (label kvm). A guest's 4-byte write that straddles two MMIO pages
// is two KVM_EXIT_MMIO exits, and KVM raises the second while completing the first (x86.c
// complete_emulated_mmio: KVM_RUN returns it even with immediate_exit set). Pausing and saving
// the vCPU many times while the guest writes a counter there must neither lose nor repeat a
// half: the exit that completing produces belongs to the vCPU thread's loop, not to whoever
// saves the state.

#include "vmm/arch/x86_64/layout.hpp"
#include "vmm/base/bus.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/kvm/kvm.hpp"
#include "vmm/vcpu.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

using namespace ember;

namespace {

constexpr std::uint64_t CODE = 0x1000;
constexpr std::uint64_t MMIO_BASE = 0xc000'0000; // DS base: no RAM there
constexpr std::uint16_t STRADDLE = 0x0ffe;       // DS offset of the write: 2 bytes in each page
constexpr int PAUSES = 400;                       // pause/save cycles, unless RUN_FOR ends first
constexpr auto RUN_FOR = std::chrono::seconds(10); // bounded run time in a TCG L1

// 16-bit code at CODE: xor eax, eax; loop: inc eax; mov [STRADDLE], eax; jmp loop.
const std::vector<std::uint8_t> GUEST = {0x66, 0x31, 0xc0, 0x66, 0x40, 0x66, 0xa3, STRADDLE & 0xff, STRADDLE >> 8, 0xeb, 0xf8};

struct Write {
    std::uint64_t offset;
    std::uint32_t value;
};

class Recorder : public BusDevice {
public:
    void read(std::uint64_t, std::span<std::uint8_t> d) noexcept override {
        for (auto& b : d) b = 0xff;
    }
    void write(std::uint64_t offset, std::span<const std::uint8_t> d) noexcept override {
        std::uint32_t v = 0;
        for (std::size_t i = 0; i < d.size() && i < 4; ++i) v |= std::uint32_t{d[i]} << (8 * i);
        std::lock_guard lk(mu);
        writes.push_back({offset, v});
    }
    std::size_t size() {
        std::lock_guard lk(mu);
        return writes.size();
    }
    std::mutex mu;
    std::vector<Write> writes;
};

struct Sink : ExitSink {
    void vcpu_exited(unsigned, VmExitKind, const std::string& d) noexcept override {
        std::lock_guard lk(mu);
        detail = d;
    }
    std::mutex mu;
    std::string detail;
};

} // namespace

TEST_CASE("kvm_vcpu_pause: pausing and saving between the halves of a split MMIO write loses and repeats none") {
    const Kvm kvm = Kvm::open();
    GuestMemory mem = layout::guest_memory(2 * layout::MiB);
    REQUIRE(mem.write(GuestAddr(CODE), std::as_bytes(std::span(GUEST))));
    VmFd vm(kvm);
    vm.setup_x86_platform(layout::KVM_IDENTITY_MAP, layout::KVM_TSS);
    vm.register_memory(mem);
    VcpuFd fd(kvm, vm, 0);
    fd.set_cpuid(kvm.supported_cpuid());
    kvm_sregs s = fd.get_sregs();
    for (kvm_segment* seg : {&s.cs, &s.es, &s.ss}) {
        seg->base = 0;
        seg->selector = 0;
    }
    s.ds.base = MMIO_BASE;
    s.ds.selector = 0;
    fd.set_sregs(s);
    kvm_regs r{};
    r.rip = CODE;
    r.rsp = 0x8000;
    r.rflags = 0x2;
    fd.set_regs(r);

    Bus pio("pio"), mmio("mmio");
    auto rec = std::make_shared<Recorder>();
    mmio.insert(MMIO_BASE, 0x2000, rec, "recorder");
    Sink sink;
    Vcpu cpu(std::move(fd), pio, mmio, sink);
    cpu.start();
    int pauses = 0;
    const auto deadline = std::chrono::steady_clock::now() + RUN_FOR;
    while (pauses < PAUSES && std::chrono::steady_clock::now() < deadline) {
        // Pause right after the vCPU thread delivered a half, while that exit is most likely
        // still pending (the thread has not re-entered KVM_RUN yet). Waiting for progress also
        // makes sure the guest runs between pauses, however slowly the host schedules it.
        const std::size_t before = rec->size();
        const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (rec->size() == before && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
        cpu.request_pause();
        REQUIRE(cpu.wait_paused(std::chrono::seconds(30)));
        const VcpuState st = cpu.save_state();
        // Parked with both halves of the last write delivered: EAX is the last value written.
        const std::size_t n = rec->size();
        CHECK(n % 2 == 0);
        if (n > 0 && st.regs.rip == CODE + 9) CHECK((st.regs.rax & 0xffff'ffff) == n / 2);
        ++pauses;
        cpu.resume();
    }
    cpu.request_stop();
    cpu.join();
    INFO("paused " << pauses << " times; vCPU end: " << sink.detail);
    CHECK(pauses > 20);
    std::lock_guard lk(rec->mu);
    INFO(rec->writes.size() << " halves written");
    REQUIRE(rec->writes.size() >= static_cast<std::size_t>(2 * pauses));
    // Write k (from 1): its low half at STRADDLE, then its high half at the next page.
    std::string first_bad;
    for (std::size_t i = 0; i + 1 < rec->writes.size() && first_bad.empty(); i += 2) {
        const std::uint32_t k = static_cast<std::uint32_t>(i / 2 + 1);
        const Write& lo = rec->writes[i];
        const Write& hi = rec->writes[i + 1];
        if (lo.offset != STRADDLE || lo.value != (k & 0xffff) || hi.offset != 0x1000 || hi.value != (k >> 16))
            first_bad = "write " + std::to_string(k) + ": (" + std::to_string(lo.offset) + ", " + std::to_string(lo.value) + "), (" +
                        std::to_string(hi.offset) + ", " + std::to_string(hi.value) + ")";
    }
    CHECK(first_bad == "");
}
