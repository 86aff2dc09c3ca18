#pragma once
// Errors on set-up paths. Set-up throws with context; vCPU-exit and device hot paths never throw.

#include <cerrno>
#include <stdexcept>
#include <string>

namespace ember {

// A user-facing error: bad configuration, unreadable files, invalid images. Its message is one
// line that names the offending input.
class ConfigError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A failed system call on a set-up path; the message is "<what>: <strerror(errno)>".
class SystemError : public std::runtime_error {
public:
    SystemError(const std::string& what, int err);
    int code() const noexcept { return err_; }

private:
    int err_;
};

[[noreturn]] inline void throw_errno(const std::string& what) { throw SystemError(what, errno); }

} // namespace ember
