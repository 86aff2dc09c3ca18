// 16550A UART register model (devices/legacy/serial.hpp).

#include "vmm/base/irq.hpp"
#include "devices/legacy/serial.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

using namespace ember;

namespace {

class CountingIrq final : public IrqLine {
public:
    void trigger() noexcept override { ++count; }
    unsigned count = 0;
};

constexpr std::uint64_t THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6,
                        SCR = 7;

struct Fixture {
    CountingIrq irq;
    std::string out;
    bool sink_ok = true;
    Serial s{irq, [this](std::span<const std::uint8_t> b) {
                 if (!sink_ok) return false;
                 out.append(b.begin(), b.end());
                 return true;
             }};

    void wr(std::uint64_t off, std::uint8_t v) {
        const std::uint8_t b[1] = {v};
        s.write(off, b);
    }
    std::uint8_t rd(std::uint64_t off) {
        std::uint8_t b[1] = {0x5a};
        s.read(off, b);
        return b[0];
    }
    std::size_t input(const std::string& text) {
        const std::vector<std::uint8_t> b(text.begin(), text.end());
        return s.enqueue_input(b);
    }
};

} // namespace

TEST_CASE("serial: THR writes reach the sink") {
    Fixture f;
    f.wr(THR, 'h');
    f.wr(THR, 'i');
    CHECK(f.out == "hi");
    CHECK(f.s.counters().write_count == 2);
    CHECK(f.s.counters().missed_write_count == 0);
    CHECK(f.irq.count == 0); // IER is 0 after reset
}

TEST_CASE("serial: every THR write raises THRE when IER.THRE is enabled") {
    Fixture f;
    f.wr(IER, 0x02);
    const unsigned after_enable = f.irq.count;
    f.wr(THR, 'a');
    f.wr(THR, 'b');
    f.wr(THR, 'c');
    CHECK(f.irq.count == after_enable + 3);
    CHECK(f.out == "abc");
}

TEST_CASE("serial: enabling IER.THRE interrupts at once; reading IIR acknowledges it") {
    Fixture f;
    CHECK((f.rd(IIR) & 0x0f) == 0x01); // nothing pending after reset
    f.wr(IER, 0x02);
    CHECK(f.irq.count == 1);
    CHECK((f.rd(IIR) & 0x0f) == 0x02);
    CHECK((f.rd(IIR) & 0x0f) == 0x01);
    // Writing IER again with THRE already enabled is not a new edge.
    f.wr(IER, 0x02);
    CHECK(f.irq.count == 1);
    CHECK((f.rd(IIR) & 0x0f) == 0x01);
    // Disabling and re-enabling is.
    f.wr(IER, 0x00);
    f.wr(IER, 0x02);
    CHECK(f.irq.count == 2);
    CHECK((f.rd(IIR) & 0x0f) == 0x02);
}

TEST_CASE("serial: THRE pending but IER.THRE disabled reports no interrupt") {
    Fixture f;
    f.wr(THR, 'x'); // THR empties at once: THRE condition pending
    CHECK((f.rd(IIR) & 0x0f) == 0x01);
    CHECK(f.irq.count == 0);
}

TEST_CASE("serial: DLAB routes offsets 0 and 1 to the divisor latch") {
    Fixture f;
    f.wr(IER, 0x05);
    f.wr(LCR, 0x83);
    f.wr(DLL, 0x01);
    f.wr(DLM, 0x02);
    CHECK(f.rd(DLL) == 0x01);
    CHECK(f.rd(DLM) == 0x02);
    CHECK(f.out.empty());
    CHECK(f.s.counters().write_count == 0);
    CHECK(f.s.counters().read_count == 0);
    f.wr(LCR, 0x03);
    CHECK(f.rd(LCR) == 0x03);
    CHECK(f.rd(IER) == 0x05); // IER unchanged by the DLM write
    f.wr(THR, 'z');
    CHECK(f.out == "z");
    // The divisor survives clearing DLAB.
    f.wr(LCR, 0x80);
    CHECK(f.rd(DLL) == 0x01);
    CHECK(f.rd(DLM) == 0x02);
}

TEST_CASE("serial: IER keeps only its low four bits") {
    Fixture f;
    f.wr(IER, 0xff);
    CHECK(f.rd(IER) == 0x0f);
    f.wr(IER, 0x00);
    CHECK(f.rd(IER) == 0x00);
}

TEST_CASE("serial: scratch register round-trips") {
    Fixture f;
    f.wr(SCR, 0xa5);
    CHECK(f.rd(SCR) == 0xa5);
    f.wr(SCR, 0x5a);
    CHECK(f.rd(SCR) == 0x5a);
}

TEST_CASE("serial: LSR reports THRE|TEMT, and DR while input is queued") {
    Fixture f;
    CHECK(f.rd(LSR) == 0x60);
    CHECK(f.input("k") == 1);
    CHECK(f.rd(LSR) == 0x61);
    CHECK(f.rd(RBR) == 'k');
    CHECK(f.rd(LSR) == 0x60);
    // LSR is read-only.
    f.wr(LSR, 0x00);
    CHECK(f.rd(LSR) == 0x60);
}

TEST_CASE("serial: input is bounded by RX_CAPACITY and read back in order") {
    Fixture f;
    REQUIRE(Serial::RX_CAPACITY == 64);
    std::vector<std::uint8_t> in(100);
    std::iota(in.begin(), in.end(), std::uint8_t{1});
    CHECK(f.s.enqueue_input(in) == 64);
    CHECK(f.s.enqueue_input(in) == 0);
    for (unsigned i = 0; i < 10; ++i) CHECK(f.rd(RBR) == in[i]);
    // Room for exactly 10 more.
    CHECK(f.s.enqueue_input(std::span(in).subspan(64, 20)) == 10);
    std::vector<std::uint8_t> got;
    while (f.rd(LSR) & 0x01) got.push_back(f.rd(RBR));
    REQUIRE(got.size() == 64);
    CHECK(std::equal(got.begin(), got.begin() + 54, in.begin() + 10));
    CHECK(std::equal(got.begin() + 54, got.end(), in.begin() + 64));
    // Reading an empty FIFO returns 0 and is counted.
    CHECK(f.rd(RBR) == 0);
    CHECK(f.s.counters().missed_read_count == 1);
    CHECK(f.s.counters().read_count == 75); // 10 + 64 + the empty read
    CHECK(f.s.enqueue_input({}) == 0);
}

TEST_CASE("serial: received data raises an interrupt when IER.RDA is set") {
    Fixture f;
    f.input("a");
    CHECK(f.irq.count == 0); // RDA disabled
    CHECK(f.rd(RBR) == 'a');
    f.wr(IER, 0x01);
    CHECK(f.irq.count == 0); // nothing to report yet
    CHECK(f.input("bc") == 2);
    CHECK(f.irq.count == 1);
    CHECK((f.rd(IIR) & 0x0f) == 0x04);
    CHECK((f.rd(IIR) & 0x0f) == 0x04); // reading IIR does not acknowledge RDA
    CHECK(f.rd(RBR) == 'b');
    CHECK(f.rd(RBR) == 'c');
    CHECK((f.rd(IIR) & 0x0f) == 0x01);
    // New input after the FIFO emptied is a new edge.
    f.input("d");
    CHECK(f.irq.count == 2);
}

TEST_CASE("serial: queued input present when IER.RDA gets enabled interrupts at once") {
    Fixture f;
    f.input("q");
    f.wr(IER, 0x01);
    CHECK(f.irq.count == 1);
    CHECK((f.rd(IIR) & 0x0f) == 0x04);
}

TEST_CASE("serial: IIR reports received data before THR empty") {
    Fixture f;
    f.wr(IER, 0x03);
    CHECK(f.irq.count == 1); // THRE
    f.input("x");
    CHECK((f.rd(IIR) & 0x0f) == 0x04);
    CHECK(f.rd(RBR) == 'x');
    // THRE was not acknowledged while RDA was reported: it shows now, once.
    CHECK((f.rd(IIR) & 0x0f) == 0x02);
    CHECK((f.rd(IIR) & 0x0f) == 0x01);
}

TEST_CASE("serial: the drained callback fires when a FIFO that refused input empties") {
    Fixture f;
    unsigned drained = 0;
    f.s.set_rx_drained_callback([&] { ++drained; });

    SECTION("no refusal, no callback") {
        f.input("abc");
        for (int i = 0; i < 3; ++i) f.rd(RBR);
        f.rd(RBR);
        CHECK(drained == 0);
    }
    SECTION("emptied by RBR reads") {
        CHECK(f.input(std::string(70, 'x')) == 64);
        for (int i = 0; i < 63; ++i) f.rd(RBR);
        CHECK(drained == 0);
        f.rd(RBR);
        CHECK(drained == 1);
        f.rd(RBR); // already empty
        CHECK(drained == 1);
        // The refusal was consumed: a later fill and drain without refusal stays quiet.
        CHECK(f.input("yz") == 2);
        f.rd(RBR);
        f.rd(RBR);
        CHECK(drained == 1);
    }
    SECTION("emptied by an RX FIFO reset (FCR bit 1)") {
        // Linux's 8250 driver clears the FIFOs when the port is opened; input the host
        // queued before that must not stall for good.
        CHECK(f.input(std::string(65, 'x')) == 64);
        f.wr(FCR, 0x03);
        CHECK((f.rd(LSR) & 0x01) == 0);
        CHECK(drained == 1);
    }
}

TEST_CASE("serial: loopback sends THR to RX and mirrors MCR in MSR") {
    Fixture f;
    CHECK(f.rd(MSR) == 0xb0); // DCD | DSR | CTS when not looped back
    f.wr(MCR, 0x1a);          // LOOP | OUT2 | RTS
    CHECK(f.rd(MCR) == 0x1a);
    CHECK(f.rd(MSR) == 0x90); // RTS -> CTS, OUT2 -> DCD
    f.wr(MCR, 0x15);          // LOOP | OUT1 | DTR
    CHECK(f.rd(MSR) == 0x60); // DTR -> DSR, OUT1 -> RI
    f.wr(IER, 0x01);
    const unsigned before = f.irq.count;
    f.wr(THR, 0x55);
    CHECK(f.out.empty());
    CHECK(f.irq.count == before + 1); // received data interrupt
    CHECK((f.rd(LSR) & 0x01) == 0x01);
    CHECK(f.rd(RBR) == 0x55);
    // MCR keeps five bits.
    f.wr(MCR, 0xff);
    CHECK(f.rd(MCR) == 0x1f);
    f.wr(MCR, 0x08);
    f.wr(THR, 'o');
    CHECK(f.out == "o");
}

TEST_CASE("serial: loopback input is bounded by the FIFO") {
    Fixture f;
    f.wr(MCR, 0x10);
    for (unsigned i = 0; i < 70; ++i) f.wr(THR, static_cast<std::uint8_t>(i));
    unsigned n = 0;
    while (f.rd(LSR) & 0x01) {
        CHECK(f.rd(RBR) == n);
        ++n;
    }
    CHECK(n == Serial::RX_CAPACITY);
}

TEST_CASE("serial: FCR bit 1 clears the receive FIFO; FIFO enable shows in IIR") {
    Fixture f;
    f.input("hello");
    f.wr(FCR, 0x01);
    CHECK((f.rd(LSR) & 0x01) == 0x01); // enabling the FIFO alone keeps the data
    CHECK((f.rd(IIR) & 0xc0) == 0xc0);
    f.wr(FCR, 0x03);
    CHECK((f.rd(LSR) & 0x01) == 0);
    CHECK((f.rd(IIR) & 0xc0) == 0xc0);
    f.wr(FCR, 0x00);
    CHECK((f.rd(IIR) & 0xc0) == 0x00);
}

TEST_CASE("serial: accesses wider than one byte are errors") {
    Fixture f;
    std::uint8_t two[2] = {0, 0};
    f.s.read(LSR, two);
    CHECK(two[0] == 0xff);
    CHECK(two[1] == 0xff);
    CHECK(f.s.counters().error_count == 1);
    const std::uint8_t w[2] = {'a', 'b'};
    f.s.write(THR, w);
    CHECK(f.s.counters().error_count == 2);
    CHECK(f.out.empty());
    CHECK(f.s.counters().write_count == 0);
}

TEST_CASE("serial: output the sink refuses is counted as missed") {
    Fixture f;
    f.sink_ok = false;
    f.wr(THR, 'a');
    f.wr(THR, 'b');
    CHECK(f.s.counters().missed_write_count == 2);
    CHECK(f.s.counters().write_count == 2);
    f.sink_ok = true;
    f.wr(THR, 'c');
    CHECK(f.s.counters().missed_write_count == 2);
    CHECK(f.out == "c");
}

TEST_CASE("serial: save and restore round-trip the register state and input") {
    Fixture a;
    a.wr(LCR, 0x80);
    a.wr(DLL, 0x03);
    a.wr(DLM, 0x01);
    a.wr(LCR, 0x1b);
    a.wr(IER, 0x01);
    a.wr(MCR, 0x0b);
    a.wr(SCR, 0x42);
    a.wr(FCR, 0x01);
    a.input("state");
    const SerialState saved = a.s.save();
    CHECK(saved.rx.size() == 5);
    CHECK(saved.scr == 0x42);
    a.rd(RBR); // changes after save() do not reach the copy
    CHECK(saved.rx.size() == 5);

    Fixture b;
    b.s.restore(saved);
    CHECK(b.rd(LCR) == 0x1b);
    CHECK(b.rd(IER) == 0x01);
    CHECK(b.rd(MCR) == 0x0b);
    CHECK(b.rd(SCR) == 0x42);
    CHECK((b.rd(IIR) & 0xcf) == 0xc4); // FIFO on, received data pending
    std::string got;
    while (b.rd(LSR) & 0x01) got.push_back(static_cast<char>(b.rd(RBR)));
    CHECK(got == "state");
    b.wr(LCR, 0x9b);
    CHECK(b.rd(DLL) == 0x03);
    CHECK(b.rd(DLM) == 0x01);
    const SerialState again = b.s.save();
    CHECK(again.lcr == 0x9b);
    CHECK(again.rx.empty());
}

TEST_CASE("serial: default state after reset") {
    Fixture f;
    CHECK(f.rd(LCR) == 0x03);
    CHECK(f.rd(MCR) == 0x08);
    CHECK(f.rd(IER) == 0x00);
    f.wr(LCR, 0x83);
    CHECK(f.rd(DLL) == 0x0c);
    CHECK(f.rd(DLM) == 0x00);
}
