// i8042 keyboard controller (devices/legacy/i8042.hpp).

#include "vmm/base/irq.hpp"
#include "devices/legacy/i8042.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

using namespace ember;

namespace {

class CountingIrq final : public IrqLine {
public:
    void trigger() noexcept override { ++count; }
    unsigned count = 0;
};

constexpr std::uint64_t DATA = 0, CMD = 4;
constexpr std::uint8_t OBF = 0x01, IBF = 0x02, CMD_DATA = 0x08;

struct Fixture {
    CountingIrq irq;
    unsigned resets = 0;
    I8042 dev{irq, [this] { ++resets; }};

    void wr(std::uint64_t off, std::uint8_t v) {
        const std::uint8_t b[1] = {v};
        dev.write(off, b);
    }
    std::uint8_t rd(std::uint64_t off) {
        std::uint8_t b[1] = {0x5a};
        dev.read(off, b);
        return b[0];
    }
    std::uint8_t status() { return rd(CMD); }
};

} // namespace

TEST_CASE("i8042: command 0xFE resets the CPU once") {
    Fixture f;
    f.wr(CMD, 0xfe);
    CHECK(f.resets == 1);
    CHECK(f.dev.reset_count() == 1);
    f.wr(CMD, 0xfe);
    CHECK(f.resets == 2);
    CHECK(f.dev.reset_count() == 2);
}

TEST_CASE("i8042: 0xFE on the data port is a keyboard byte, not a reset") {
    Fixture f;
    f.wr(DATA, 0xfe);
    CHECK(f.resets == 0);
    CHECK(f.dev.reset_count() == 0);
    CHECK(f.rd(DATA) == 0xfa);
}

TEST_CASE("i8042: reading the control byte with command 0x20") {
    Fixture f;
    CHECK((f.status() & OBF) == 0);
    f.wr(CMD, 0x20);
    CHECK((f.status() & OBF) == OBF);
    CHECK(f.rd(DATA) == 0x05); // keyboard interrupt enabled | SYS flag
    CHECK((f.status() & OBF) == 0);
}

TEST_CASE("i8042: command 0x60 writes the control byte from the next data byte") {
    Fixture f;
    f.wr(CMD, 0x60);
    f.wr(DATA, 0x47);
    CHECK((f.status() & OBF) == 0); // the byte was for the controller: no keyboard ACK
    f.wr(CMD, 0x20);
    CHECK(f.rd(DATA) == 0x47);
    // The pending command is consumed: the next data byte goes to the keyboard.
    f.wr(DATA, 0xf4);
    CHECK(f.rd(DATA) == 0xfa);
    f.wr(CMD, 0x20);
    CHECK(f.rd(DATA) == 0x47);
}

TEST_CASE("i8042: self tests and output port") {
    Fixture f;
    f.wr(CMD, 0xaa);
    CHECK(f.rd(DATA) == 0x55);
    f.wr(CMD, 0xab);
    CHECK((f.status() & OBF) == OBF);
    CHECK(f.rd(DATA) == 0x00);
    f.wr(CMD, 0xd0);
    CHECK(f.rd(DATA) == 0x01); // reset line inactive
    f.wr(CMD, 0xd1);
    f.wr(DATA, 0x03);
    f.wr(CMD, 0xd0);
    CHECK(f.rd(DATA) == 0x03);
    CHECK(f.resets == 0);
}

TEST_CASE("i8042: keyboard disable and enable toggle control bit 4") {
    Fixture f;
    f.wr(CMD, 0xad);
    f.wr(CMD, 0x20);
    CHECK((f.rd(DATA) & 0x10) == 0x10);
    f.wr(CMD, 0xae);
    f.wr(CMD, 0x20);
    CHECK((f.rd(DATA) & 0x10) == 0);
}

TEST_CASE("i8042: status never shows the input buffer full; bit 3 tracks command vs data") {
    Fixture f;
    CHECK((f.status() & IBF) == 0);
    CHECK((f.status() & 0x04) == 0x04); // SYS flag
    f.wr(CMD, 0xaa);
    CHECK((f.status() & IBF) == 0);
    CHECK((f.status() & CMD_DATA) == CMD_DATA);
    f.wr(DATA, 0x00);
    CHECK((f.status() & IBF) == 0);
    CHECK((f.status() & CMD_DATA) == 0);
}

TEST_CASE("i8042: Ctrl-Alt-Del queues its scan codes and raises IRQ 1") {
    Fixture f;
    REQUIRE(f.dev.send_ctrl_alt_del());
    CHECK(f.irq.count == 1);
    CHECK((f.status() & OBF) == OBF);
    std::vector<std::uint8_t> got;
    while (f.status() & OBF) got.push_back(f.rd(DATA));
    // Scan code set 2 (the guest's i8042 driver is in direct mode: XLATE is clear).
    REQUIRE(got.size() == 11);
    CHECK(got[0] == 0x14); // Ctrl make
    CHECK(got[1] == 0x11); // Alt make
    CHECK(got[2] == 0xe0);
    CHECK(got[3] == 0x71); // Del make
    CHECK(got == std::vector<std::uint8_t>{0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14});
    CHECK((f.dev.save().control & 0x40) == 0); // XLATE clear: set 2 is what the guest decodes
    // Each read that leaves bytes behind raises the next edge.
    CHECK(f.irq.count == 11);
}

TEST_CASE("i8042: Ctrl-Alt-Del with keyboard interrupts disabled queues without an IRQ") {
    Fixture f;
    f.wr(CMD, 0x60);
    f.wr(DATA, 0x04); // SYS only
    REQUIRE(f.dev.send_ctrl_alt_del());
    CHECK(f.irq.count == 0);
    CHECK((f.status() & OBF) == OBF);
}

TEST_CASE("i8042: Ctrl-Alt-Del is refused when the output buffer cannot hold it") {
    Fixture f;
    CHECK(f.dev.send_ctrl_alt_del()); // 11 of 16 bytes
    const unsigned irqs = f.irq.count;
    CHECK_FALSE(f.dev.send_ctrl_alt_del());
    CHECK(f.irq.count == irqs);
    CHECK(f.dev.save().out.size() == 11);
}

TEST_CASE("i8042: a byte for the keyboard is acknowledged with 0xFA") {
    Fixture f;
    f.wr(DATA, 0xed); // set LEDs
    CHECK(f.irq.count == 1);
    CHECK((f.status() & OBF) == OBF);
    CHECK(f.rd(DATA) == 0xfa);
    CHECK((f.status() & OBF) == 0);
    CHECK(f.rd(DATA) == 0x00); // empty buffer
}

TEST_CASE("i8042: accesses wider than one byte are ignored") {
    Fixture f;
    std::uint8_t two[2] = {0, 0};
    f.dev.read(CMD, two);
    CHECK(two[0] == 0xff);
    CHECK(two[1] == 0xff);
    const std::uint8_t w[2] = {0xfe, 0xfe};
    f.dev.write(CMD, w);
    CHECK(f.resets == 0);
}

TEST_CASE("i8042: save and restore") {
    Fixture a;
    a.wr(CMD, 0x60);
    a.wr(DATA, 0x45);
    a.wr(CMD, 0xaa);
    const I8042State s = a.dev.save();
    CHECK(s.control == 0x45);
    REQUIRE(s.out.size() == 1);

    Fixture b;
    b.dev.restore(s);
    CHECK((b.status() & OBF) == OBF);
    CHECK(b.rd(DATA) == 0x55);
    b.wr(CMD, 0x20);
    CHECK(b.rd(DATA) == 0x45);
}
