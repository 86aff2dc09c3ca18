// The `ember run` agent protocol codec (api/run/run_proto.h), compiled as C++ here as Ember
// will compile it (the agent compiles the same header as C): every frame type round trips in its
// direction, every prefix of a valid frame asks for more, and every malformed header or payload
// is refused with its own error, a bad header before any of its payload has arrived.

#include "api/run/run_proto.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<std::uint8_t>;

Bytes header(std::uint8_t type, std::uint8_t channel, std::uint8_t flags, std::uint8_t reserved, std::uint32_t length) {
    Bytes b{type, channel, flags, reserved, 0, 0, 0, 0};
    erp_put_u32(b.data() + 4, length);
    return b;
}

Bytes frame(std::uint8_t type, std::uint8_t channel, const Bytes& payload, std::uint8_t flags = 0) {
    Bytes b = header(type, channel, flags, 0, static_cast<std::uint32_t>(payload.size()));
    b.insert(b.end(), payload.begin(), payload.end());
    return b;
}

Bytes u32s(std::initializer_list<std::uint32_t> vs) {
    Bytes b;
    for (auto v : vs) {
        std::uint8_t w[4];
        erp_put_u32(w, v);
        b.insert(b.end(), w, w + 4);
    }
    return b;
}

int decode(const Bytes& b, int dir, erp_frame* f = nullptr, std::size_t* used = nullptr) {
    erp_frame scratch{};
    std::size_t n = 0;
    return erp_decode(b.data(), b.size(), dir, f ? f : &scratch, used ? used : &n);
}

// A whole, valid frame decodes; each of its proper prefixes needs more.
void require_valid(const Bytes& b, int dir) {
    for (std::size_t n = 0; n < b.size(); ++n) {
        erp_frame f{};
        std::size_t used = 99;
        REQUIRE(erp_decode(b.data(), n, dir, &f, &used) == ERP_NEED_MORE);
        REQUIRE(used == 99);
    }
    REQUIRE(decode(b, dir) == ERP_OK);
}

Bytes exec_spec(std::uint32_t flags, std::uint16_t rows, std::uint16_t cols, const char* cwd,
                const std::vector<const char*>& argv, const std::vector<const char*>& env) {
    const std::size_t need = erp_exec_encode(nullptr, 0, flags, rows, cols, cwd, argv.data(),
                                             static_cast<std::uint32_t>(argv.size()), env.data(),
                                             static_cast<std::uint32_t>(env.size()));
    Bytes b(need);
    if (need != 0)
        REQUIRE(erp_exec_encode(b.data(), b.size(), flags, rows, cols, cwd, argv.data(),
                                static_cast<std::uint32_t>(argv.size()), env.data(),
                                static_cast<std::uint32_t>(env.size())) == need);
    return b;
}

}  // namespace

TEST_CASE("run protocol: each frame type round trips in its direction") {
    std::uint8_t buf[ERP_HEADER_SIZE + 8 + ERP_MAX_EXIT_TEXT];
    erp_frame f{};
    std::size_t used = 0;

    std::size_t n = erp_encode_ready(buf, 256 * 1024);
    REQUIRE(n == 16);
    REQUIRE(erp_decode(buf, n, ERP_TO_HOST, &f, &used) == ERP_OK);
    CHECK(used == n);
    CHECK(f.type == ERP_T_READY);
    CHECK(erp_get_u32(f.payload) == ERP_VERSION);
    CHECK(erp_get_u32(f.payload + 4) == 256 * 1024);
    require_valid(Bytes(buf, buf + n), ERP_TO_HOST);

    n = erp_encode_credit(buf, 4096);
    REQUIRE(erp_decode(buf, n, ERP_TO_HOST, &f, &used) == ERP_OK);
    CHECK((f.type == ERP_T_CREDIT && f.channel == ERP_CH_STDIN && erp_get_u32(f.payload) == 4096));

    n = erp_encode_signal(buf, 2);
    REQUIRE(erp_decode(buf, n, ERP_TO_GUEST, &f, &used) == ERP_OK);
    CHECK((f.type == ERP_T_SIGNAL && erp_get_u32(f.payload) == 2));

    n = erp_encode_winsize(buf, 50, 132);
    REQUIRE(erp_decode(buf, n, ERP_TO_GUEST, &f, &used) == ERP_OK);
    CHECK((f.type == ERP_T_WINSIZE && erp_get_u16(f.payload) == 50 && erp_get_u16(f.payload + 2) == 132));

    n = erp_encode_eof(buf);
    REQUIRE(n == ERP_HEADER_SIZE);
    REQUIRE(erp_decode(buf, n, ERP_TO_GUEST, &f, &used) == ERP_OK);
    CHECK((f.type == ERP_T_EOF && f.channel == ERP_CH_STDIN && f.length == 0 && used == 8));

    const std::string why = "cannot run 'x': No such file or directory";
    n = erp_encode_exit(buf, ERP_EXIT_START, 2, why.data(), why.size());
    REQUIRE(erp_decode(buf, n, ERP_TO_HOST, &f, &used) == ERP_OK);
    CHECK(f.type == ERP_T_EXIT);
    CHECK(erp_get_u32(f.payload) == ERP_EXIT_START);
    CHECK(erp_get_u32(f.payload + 4) == 2);
    CHECK(std::string(reinterpret_cast<const char*>(f.payload + 8), f.length - 8) == why);
    require_valid(Bytes(buf, buf + n), ERP_TO_HOST);

    n = erp_encode_exit(buf, ERP_EXIT_SIGNAL, 9, nullptr, 0);
    REQUIRE(erp_decode(buf, n, ERP_TO_HOST, &f, &used) == ERP_OK);
    CHECK((f.length == 8 && erp_get_u32(f.payload + 4) == 9));
    n = erp_encode_exit(buf, ERP_EXIT_CODE, 255, nullptr, 0);
    REQUIRE(erp_decode(buf, n, ERP_TO_HOST, &f, &used) == ERP_OK);
}

TEST_CASE("run protocol: DATA carries stdin to the guest and stdout/stderr to the host, up to 64 KiB") {
    for (std::uint8_t ch : {std::uint8_t{ERP_CH_STDOUT}, std::uint8_t{ERP_CH_STDERR}}) {
        Bytes payload(ERP_MAX_PAYLOAD);
        for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i * 7);
        Bytes b(ERP_HEADER_SIZE);
        REQUIRE(erp_encode_header(b.data(), ERP_T_DATA, ch, 0, ERP_MAX_PAYLOAD) == ERP_HEADER_SIZE);
        b.insert(b.end(), payload.begin(), payload.end());
        erp_frame f{};
        std::size_t used = 0;
        REQUIRE(decode(b, ERP_TO_HOST, &f, &used) == ERP_OK);
        CHECK(f.channel == ch);
        CHECK(Bytes(f.payload, f.payload + f.length) == payload);
        CHECK(used == b.size());
        CHECK(decode(b, ERP_TO_GUEST) == ERP_E_CHANNEL);
    }
    const Bytes in = frame(ERP_T_DATA, ERP_CH_STDIN, {1, 2, 3});
    require_valid(in, ERP_TO_GUEST);
    CHECK(decode(in, ERP_TO_HOST) == ERP_E_CHANNEL);
}

TEST_CASE("run protocol: a stream of frames decodes one after another") {
    Bytes s;
    std::uint8_t buf[32];
    s.insert(s.end(), buf, buf + erp_encode_ready(buf, 1));
    const Bytes out = frame(ERP_T_DATA, ERP_CH_STDOUT, {'h', 'i'});
    s.insert(s.end(), out.begin(), out.end());
    s.insert(s.end(), buf, buf + erp_encode_credit(buf, 1));
    s.insert(s.end(), buf, buf + erp_encode_exit(buf, ERP_EXIT_CODE, 7, nullptr, 0));
    std::vector<std::uint8_t> types;
    std::size_t pos = 0;
    while (pos < s.size()) {
        erp_frame f{};
        std::size_t used = 0;
        REQUIRE(erp_decode(s.data() + pos, s.size() - pos, ERP_TO_HOST, &f, &used) == ERP_OK);
        types.push_back(f.type);
        pos += used;
    }
    CHECK(types == std::vector<std::uint8_t>{ERP_T_READY, ERP_T_DATA, ERP_T_CREDIT, ERP_T_EXIT});
}

TEST_CASE("run protocol: unknown types and types sent the wrong way are refused") {
    for (int t : {0, 9, 0x7f, 0xff})
        for (int dir : {ERP_TO_HOST, ERP_TO_GUEST})
            CHECK(decode(header(static_cast<std::uint8_t>(t), 0, 0, 0, 0), dir) == ERP_E_TYPE);
    // Guest to host only: READY, CREDIT, EXIT. Host to guest only: EXEC, EOF, SIGNAL, WINSIZE.
    CHECK(decode(frame(ERP_T_READY, 0, u32s({1, 1})), ERP_TO_GUEST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_CREDIT, ERP_CH_STDIN, u32s({1})), ERP_TO_GUEST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({0, 0})), ERP_TO_GUEST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_EXEC, 0, {1}), ERP_TO_HOST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_EOF, ERP_CH_STDIN, {}), ERP_TO_HOST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_SIGNAL, 0, u32s({2})), ERP_TO_HOST) == ERP_E_TYPE);
    CHECK(decode(frame(ERP_T_WINSIZE, 0, u32s({0})), ERP_TO_HOST) == ERP_E_TYPE);
}

TEST_CASE("run protocol: channels, flags and the reserved byte are checked per type") {
    CHECK(decode(frame(ERP_T_READY, ERP_CH_STDOUT, u32s({1, 1})), ERP_TO_HOST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_EXIT, ERP_CH_STDERR, u32s({0, 0})), ERP_TO_HOST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_CREDIT, ERP_CH_CONTROL, u32s({1})), ERP_TO_HOST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_DATA, ERP_CH_CONTROL, {1}), ERP_TO_HOST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_DATA, 4, {1}), ERP_TO_HOST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_DATA, ERP_CH_STDOUT, {1}), ERP_TO_GUEST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_EOF, ERP_CH_STDOUT, {}), ERP_TO_GUEST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_EXEC, ERP_CH_STDIN, {1}), ERP_TO_GUEST) == ERP_E_CHANNEL);
    CHECK(decode(frame(ERP_T_SIGNAL, 1, u32s({2})), ERP_TO_GUEST) == ERP_E_CHANNEL);

    CHECK(decode(frame(ERP_T_DATA, ERP_CH_STDOUT, {1}, ERP_F_MORE), ERP_TO_HOST) == ERP_E_FLAGS);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({0, 0}), 0x80), ERP_TO_HOST) == ERP_E_FLAGS);
    CHECK(decode(frame(ERP_T_EXEC, 0, {1}, ERP_F_MORE | 2), ERP_TO_GUEST) == ERP_E_FLAGS);
    CHECK(decode(frame(ERP_T_EXEC, 0, {1}, ERP_F_MORE), ERP_TO_GUEST) == ERP_OK);
    Bytes reserved = frame(ERP_T_DATA, ERP_CH_STDOUT, {1});
    reserved[3] = 1;
    CHECK(decode(reserved, ERP_TO_HOST) == ERP_E_FLAGS);
    // The encoder refuses what the decoder would.
    std::uint8_t h[8];
    CHECK(erp_encode_header(h, ERP_T_DATA, ERP_CH_CONTROL, 0, 1) == 0);
    CHECK(erp_encode_header(h, ERP_T_DATA, ERP_CH_STDOUT, 0, ERP_MAX_PAYLOAD + 1) == 0);
    CHECK(erp_encode_header(h, ERP_T_EOF, ERP_CH_STDIN, ERP_F_MORE, 0) == 0);
    CHECK(erp_encode_header(h, 42, 0, 0, 0) == 0);
}

TEST_CASE("run protocol: lengths outside a type's bounds are refused from the header alone") {
    struct Case {
        std::uint8_t type, channel;
        std::uint32_t length;
        int dir;
    };
    const Case cases[] = {
        {ERP_T_DATA, ERP_CH_STDOUT, 0, ERP_TO_HOST},
        {ERP_T_DATA, ERP_CH_STDOUT, ERP_MAX_PAYLOAD + 1, ERP_TO_HOST},
        {ERP_T_DATA, ERP_CH_STDERR, 0xffffffffu, ERP_TO_HOST},
        {ERP_T_DATA, ERP_CH_STDIN, 0, ERP_TO_GUEST},
        {ERP_T_READY, 0, 7, ERP_TO_HOST},
        {ERP_T_READY, 0, 9, ERP_TO_HOST},
        {ERP_T_CREDIT, ERP_CH_STDIN, 3, ERP_TO_HOST},
        {ERP_T_CREDIT, ERP_CH_STDIN, 5, ERP_TO_HOST},
        {ERP_T_EXIT, 0, 7, ERP_TO_HOST},
        {ERP_T_EXIT, 0, 8 + ERP_MAX_EXIT_TEXT + 1, ERP_TO_HOST},
        {ERP_T_EXIT, 0, 0x80000000u, ERP_TO_HOST},
        {ERP_T_EXEC, 0, 0, ERP_TO_GUEST},
        {ERP_T_EXEC, 0, ERP_MAX_PAYLOAD + 1, ERP_TO_GUEST},
        {ERP_T_EOF, ERP_CH_STDIN, 1, ERP_TO_GUEST},
        {ERP_T_SIGNAL, 0, 8, ERP_TO_GUEST},
        {ERP_T_WINSIZE, 0, 2, ERP_TO_GUEST},
    };
    for (const auto& c : cases) {
        INFO("type " << int{c.type} << " length " << c.length);
        // Only the 8 header bytes are there: refused without waiting for the payload.
        CHECK(decode(header(c.type, c.channel, 0, 0, c.length), c.dir) == ERP_E_LENGTH);
    }
}

TEST_CASE("run protocol: payload values out of range are refused") {
    CHECK(decode(frame(ERP_T_READY, 0, u32s({2, 4096})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_READY, 0, u32s({ERP_VERSION, 0})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_READY, 0, u32s({ERP_VERSION, ERP_MAX_STDIN_WINDOW + 1})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_READY, 0, u32s({ERP_VERSION, ERP_MAX_STDIN_WINDOW})), ERP_TO_HOST) == ERP_OK);
    CHECK(decode(frame(ERP_T_CREDIT, ERP_CH_STDIN, u32s({0})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_CREDIT, ERP_CH_STDIN, u32s({ERP_MAX_STDIN_WINDOW + 1})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_SIGNAL, 0, u32s({0})), ERP_TO_GUEST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_SIGNAL, 0, u32s({65})), ERP_TO_GUEST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_SIGNAL, 0, u32s({64})), ERP_TO_GUEST) == ERP_OK);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({ERP_EXIT_CODE, 256})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({ERP_EXIT_SIGNAL, 0})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({ERP_EXIT_SIGNAL, 65})), ERP_TO_HOST) == ERP_E_VALUE);
    CHECK(decode(frame(ERP_T_EXIT, 0, u32s({3, 0})), ERP_TO_HOST) == ERP_E_VALUE);
    Bytes nul_text = u32s({ERP_EXIT_START, 2});
    nul_text.insert(nul_text.end(), {'a', 0, 'b'});
    CHECK(decode(frame(ERP_T_EXIT, 0, nul_text), ERP_TO_HOST) == ERP_E_VALUE);
    for (int rc : {ERP_E_TYPE, ERP_E_CHANNEL, ERP_E_FLAGS, ERP_E_LENGTH, ERP_E_VALUE})
        CHECK(std::string(erp_error_name(rc)) != "unknown status");
}

TEST_CASE("run protocol: EXIT text is cut at its limit and at a NUL") {
    std::uint8_t buf[ERP_HEADER_SIZE + 8 + ERP_MAX_EXIT_TEXT];
    const std::string long_text(ERP_MAX_EXIT_TEXT + 100, 'x');
    std::size_t n = erp_encode_exit(buf, ERP_EXIT_START, 1, long_text.data(), long_text.size());
    CHECK(n == ERP_HEADER_SIZE + 8 + ERP_MAX_EXIT_TEXT);
    CHECK(decode(Bytes(buf, buf + n), ERP_TO_HOST) == ERP_OK);
    const char with_nul[] = {'a', 'b', 0, 'c'};
    n = erp_encode_exit(buf, ERP_EXIT_START, 1, with_nul, sizeof with_nul);
    CHECK(n == ERP_HEADER_SIZE + 10);
}

TEST_CASE("run protocol: the exec spec round trips argv, env, cwd and the tty") {
    const std::string big(100000, 'z');
    const std::vector<const char*> argv{"sh", "-c", "a b 'c' \"d\"", "", "\xc3\xa9\xe2\x98\x83", big.c_str()};
    const std::vector<const char*> env{"A=1", "EMPTY=", "B=x=y"};
    const Bytes spec = exec_spec(ERP_EXEC_TTY, 40, 120, "/tmp", argv, env);
    REQUIRE(!spec.empty());
    erp_exec e{};
    REQUIRE(erp_exec_parse(spec.data(), spec.size(), &e) == ERP_OK);
    CHECK(e.flags == ERP_EXEC_TTY);
    CHECK((e.rows == 40 && e.cols == 120));
    CHECK(std::string(e.cwd) == "/tmp");
    REQUIRE(e.argc == argv.size());
    REQUIRE(e.envc == env.size());
    const char* s = e.strings;
    for (const char* a : argv) {
        CHECK(std::string(s) == a);
        s = erp_next_string(s);
    }
    for (const char* v : env) {
        CHECK(std::string(s) == v);
        s = erp_next_string(s);
    }
    CHECK(reinterpret_cast<const std::uint8_t*>(s) == spec.data() + spec.size());

    const Bytes plain = exec_spec(0, 0, 0, "", {"true"}, {});
    REQUIRE(erp_exec_parse(plain.data(), plain.size(), &e) == ERP_OK);
    CHECK((e.flags == 0 && e.argc == 1 && e.envc == 0 && std::string(e.cwd).empty()));
    // A buffer too small is left alone and the size needed comes back.
    std::uint8_t small[4] = {9, 9, 9, 9};
    const char* t[] = {"true"};
    CHECK(erp_exec_encode(small, sizeof small, 0, 0, 0, "", t, 1, nullptr, 0) == plain.size());
    CHECK(small[0] == 9);
}

TEST_CASE("run protocol: the exec encoder refuses what the agent would") {
    CHECK(exec_spec(0, 0, 0, "", {}, {}).empty());
    CHECK(exec_spec(0, 0, 0, "", {""}, {}).empty());
    CHECK(exec_spec(2, 0, 0, "", {"true"}, {}).empty());
    CHECK(exec_spec(0, 0, 0, "", {"true"}, {"NOEQUALS"}).empty());
    CHECK(exec_spec(0, 0, 0, "", {"true"}, {"=value"}).empty());
    const std::string huge(ERP_MAX_EXEC, 'a');
    CHECK(exec_spec(0, 0, 0, "", {"true", huge.c_str()}, {}).empty());
}

TEST_CASE("run protocol: malformed exec specs are refused") {
    const Bytes good = exec_spec(0, 0, 0, "/", {"echo", "hi"}, {"A=1"});
    erp_exec e{};
    REQUIRE(erp_exec_parse(good.data(), good.size(), &e) == ERP_OK);
    // Every truncation: a string loses its NUL, or strings are missing.
    for (std::size_t n = 0; n < good.size(); ++n) {
        INFO("length " << n);
        CHECK(erp_exec_parse(good.data(), n, &e) == ERP_E_LENGTH);
    }
    Bytes trailing = good;
    trailing.push_back('x');
    CHECK(erp_exec_parse(trailing.data(), trailing.size(), &e) == ERP_E_LENGTH);
    trailing.back() = 0;
    CHECK(erp_exec_parse(trailing.data(), trailing.size(), &e) == ERP_E_LENGTH);

    auto patched = [&](std::size_t off, std::uint32_t v) {
        Bytes b = good;
        erp_put_u32(b.data() + off, v);
        return erp_exec_parse(b.data(), b.size(), &e);
    };
    CHECK(patched(0, 2) == ERP_E_VALUE);                 // unknown flag
    CHECK(patched(8, 0) == ERP_E_VALUE);                 // argc 0
    CHECK(patched(8, ERP_MAX_ARGC + 1) == ERP_E_VALUE);  // argc above the limit
    CHECK(patched(12, ERP_MAX_ENVC + 1) == ERP_E_VALUE); // envc above the limit
    CHECK(patched(8, 3) == ERP_E_LENGTH);  // one more string than there is
    CHECK(patched(12, 2) == ERP_E_LENGTH); // likewise, counted as env
    CHECK(patched(12, 0) == ERP_E_LENGTH); // "A=1" left over after the last string
    CHECK(patched(8, 1) == ERP_E_VALUE);   // "hi" read as env: no '='

    const Bytes empty_arg0 = [] {
        Bytes b(ERP_EXEC_FIXED, 0);
        erp_put_u32(b.data() + 8, 1);
        b.push_back(0);  // cwd ""
        b.push_back(0);  // argv[0] ""
        return b;
    }();
    CHECK(erp_exec_parse(empty_arg0.data(), empty_arg0.size(), &e) == ERP_E_VALUE);
    Bytes oversized(ERP_MAX_EXEC + 1, 0);
    CHECK(erp_exec_parse(oversized.data(), oversized.size(), &e) == ERP_E_LENGTH);
}
