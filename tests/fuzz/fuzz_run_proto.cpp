// libFuzzer target: the `ember run` agent protocol decoder (api/run/run_proto.h) as Ember
// will use it on the guest's bytes, plus the agent's exec-spec parser. Input: one selector byte,
// then the bytes. Selector bits 0-1: 0/1 = a frame stream to the host / to the guest, 2 = an
// exec spec; bits 2-7 (v): the stream arrives in reads of (v+1)^2 * 17 bytes (17..69632) into
// one fixed ERP_MAX_FRAME buffer, as Ember's reader will hold it. Invariants checked: no crash or
// sanitizer report; a full buffer never asks for more (the bound on what a guest can make Ember
// hold); every accepted frame lies inside the buffer, has a legal header for its direction and
// re-encodes to the same header; an accepted exec spec walks to its exact end, has a non-empty
// argv[0] and NAME= env entries, and re-encodes to the same bytes.

#include "api/run/run_proto.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

void check(bool ok) {
    if (!ok) std::abort();
}

void fuzz_stream(const std::uint8_t* data, std::size_t size, int dir, std::size_t read_size) {
    static std::uint8_t buf[ERP_MAX_FRAME];
    std::size_t have = 0, fed = 0;
    for (;;) {
        erp_frame f{};
        std::size_t used = 0;
        const int rc = erp_decode(buf, have, dir, &f, &used);
        if (rc < 0) {
            check(have >= ERP_HEADER_SIZE);
            return;
        }
        if (rc == ERP_OK) {
            check(used == ERP_HEADER_SIZE + f.length && used <= have && f.length <= ERP_MAX_PAYLOAD);
            check(f.payload == buf + ERP_HEADER_SIZE);
            check(erp_check_header(f.type, f.channel, f.flags, 0, f.length, dir) == ERP_OK);
            std::uint8_t h[ERP_HEADER_SIZE];
            check(erp_encode_header(h, f.type, f.channel, f.flags, f.length) == ERP_HEADER_SIZE);
            check(std::memcmp(h, buf, ERP_HEADER_SIZE) == 0);
            if (f.type == ERP_T_DATA)
                check(dir == ERP_TO_HOST ? (f.channel == ERP_CH_STDOUT || f.channel == ERP_CH_STDERR)
                                         : f.channel == ERP_CH_STDIN);
            if (f.type == ERP_T_EXIT) check(std::memchr(f.payload + 8, 0, f.length - 8) == nullptr);
            std::memmove(buf, buf + used, have - used);
            have -= used;
            continue;
        }
        check(rc == ERP_NEED_MORE);
        check(have < ERP_MAX_FRAME);  // a full buffer always holds a whole frame or an error
        if (fed == size) return;
        std::size_t n = read_size;
        if (n > size - fed) n = size - fed;
        if (n > ERP_MAX_FRAME - have) n = ERP_MAX_FRAME - have;
        std::memcpy(buf + have, data + fed, n);
        have += n;
        fed += n;
    }
}

void fuzz_exec(const std::uint8_t* data, std::size_t size) {
    erp_exec e{};
    if (erp_exec_parse(data, size, &e) != ERP_OK) return;
    check(e.argc >= 1 && e.argc <= ERP_MAX_ARGC && e.envc <= ERP_MAX_ENVC);
    std::vector<const char*> argv, env;
    const char* s = e.strings;
    for (std::uint32_t i = 0; i < e.argc; ++i, s = erp_next_string(s)) argv.push_back(s);
    for (std::uint32_t i = 0; i < e.envc; ++i, s = erp_next_string(s)) env.push_back(s);
    check(reinterpret_cast<const std::uint8_t*>(s) == data + size);
    check(argv[0][0] != 0);
    for (const char* v : env) check(v[0] != '=' && std::strchr(v, '=') != nullptr);
    std::vector<std::uint8_t> again(size);
    check(erp_exec_encode(again.data(), again.size(), e.flags, e.rows, e.cols, e.cwd, argv.data(), e.argc,
                          env.data(), e.envc) == size);
    check(std::memcmp(again.data(), data, size) == 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const int mode = data[0] & 3;
    const std::size_t v = std::size_t{data[0]} >> 2;
    const std::size_t read_size = (v + 1) * (v + 1) * 17;
    if (mode == 2)
        fuzz_exec(data + 1, size - 1);
    else if (mode < 2)
        fuzz_stream(data + 1, size - 1, mode == 0 ? ERP_TO_HOST : ERP_TO_GUEST, read_size);
    return 0;
}
