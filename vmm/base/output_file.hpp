#pragma once
// Output sinks named by a path (log_path, metrics_path, serial_out_path): a regular file, a
// character device or a named pipe, opened so that neither the open nor any later write waits
// for a reader.
//
// A named pipe is opened read-write, as Firecracker does: Ember then holds a read end itself, so
// the open succeeds whether or not a reader has the pipe open yet (a write-only non-blocking
// open fails with ENXIO then, a blocking one waits for the reader). Ember never reads that end.
// Output written while no reader is attached, before the first one or after one left, waits in
// the pipe's buffer (64 KiB by default) for the next reader; once the buffer is full a write
// fails with EAGAIN and the caller drops and counts it. A write never fails with EPIPE.

#include "vmm/base/unique_fd.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <sys/types.h>

namespace ember {

// Opens `path` as above, creating a regular file with `mode` when nothing exists there; anything
// but a named pipe is opened write-only for appending. The descriptor is O_NONBLOCK and
// O_CLOEXEC. Returns an invalid UniqueFd with errno set on failure.
UniqueFd open_output(const std::string& path, mode_t mode) noexcept;

// Writes whole records (metrics lines) to a sink opened by open_output, never blocking. A record
// a full pipe takes only part of is finished by later calls before any new record, so a reader
// never sees part of one glued to the next; a record that finds the sink full, or an earlier
// one still unfinished, is dropped whole.
class RecordWriter {
public:
    RecordWriter() = default;
    explicit RecordWriter(UniqueFd fd) noexcept : fd_(std::move(fd)) {}

    bool valid() const noexcept { return fd_.valid(); }
    // False when `record` was dropped; true when it was written or started (then it is finished
    // by a later call).
    bool write(std::string_view record);
    // Bytes of a started record still to write.
    std::size_t pending() const noexcept { return tail_.size(); }

private:
    // Writes what the sink takes from the front of `bytes`; returns how much, or -1 on an error
    // other than a full sink.
    ssize_t write_some(std::string_view bytes) noexcept;

    UniqueFd fd_;
    std::string tail_;
};

} // namespace ember
