// libFuzzer target: the snapshot file decoder (PUT /snapshot/load and --describe-snapshot read
// client-supplied files). Input byte 0 picks the framing: odd = the rest is a payload, framed
// with a valid header and CRC so the fuzzer reaches the record parser; even = the rest is a
// whole file. Invariants: no crash or sanitizer report; a refusal is a FormatError only; a
// decoded file re-encodes to bytes that decode to the same encoding (the encoder is total over
// what the decoder accepts).

#include "vmm/base/byte_codec.hpp"
#include "vmm/snapshot_file.hpp"

#include <cstdint>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const auto rest = std::as_bytes(std::span(data + 1, size - 1));
    const std::vector<std::byte> file = (data[0] & 1) != 0 ? ember::frame_snapshot_payload(rest)
                                                            : std::vector<std::byte>(rest.begin(), rest.end());
    ember::SnapshotFile s;
    try {
        s = ember::decode_snapshot(file);
    } catch (const ember::FormatError&) {
        return 0;
    }
    const auto again = ember::encode_snapshot(s);
    if (ember::encode_snapshot(ember::decode_snapshot(again)) != again) std::abort();
    return 0;
}
