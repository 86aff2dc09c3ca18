#pragma once
// Little-endian encoding of plain values for files Ember writes and reads back (snapshots).
// ByteReader never reads past its input: every get names what it reads, and a short or
// inconsistent input throws FormatError with that name and the offset.

#include "vmm/base/error.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace ember {

// A file Ember reads back is truncated, corrupted or of another version. A ConfigError: the API
// answers it with 400.
class FormatError : public ConfigError {
public:
    using ConfigError::ConfigError;
};

class ByteWriter {
public:
    void u8(std::uint8_t v) { bytes_.push_back(std::byte{v}); }
    void boolean(bool v) { u8(v ? 1 : 0); }
    void u16(std::uint16_t v) { le(v, 2); }
    void u32(std::uint32_t v) { le(v, 4); }
    void u64(std::uint64_t v) { le(v, 8); }
    void raw(std::span<const std::byte> b) { bytes_.insert(bytes_.end(), b.begin(), b.end()); }
    // u32 length, then the bytes.
    void string(std::string_view s);
    // A trivially copyable struct of the host ABI (the kernel's uapi structs): u32 size, then
    // its bytes. get_pod() refuses a different size.
    template <class T>
    void pod(const T& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        u32(static_cast<std::uint32_t>(sizeof(T)));
        raw(std::as_bytes(std::span(&v, 1)));
    }
    // u32 count, then each element as pod bytes (no per-element size).
    template <class T>
    void pod_array(const std::vector<T>& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        u32(static_cast<std::uint32_t>(sizeof(T)));
        u32(static_cast<std::uint32_t>(v.size()));
        raw(std::as_bytes(std::span(v)));
    }

    std::size_t size() const noexcept { return bytes_.size(); }
    std::vector<std::byte>& bytes() noexcept { return bytes_; }

private:
    void le(std::uint64_t v, int n) {
        for (int i = 0; i < n; ++i) bytes_.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xff));
    }
    std::vector<std::byte> bytes_;
};

class ByteReader {
public:
    explicit ByteReader(std::span<const std::byte> in, std::string what = "input") noexcept
        : in_(in), what_(std::move(what)) {}

    std::uint8_t u8(const char* field) { return static_cast<std::uint8_t>(le(field, 1)); }
    bool boolean(const char* field);
    std::uint16_t u16(const char* field) { return static_cast<std::uint16_t>(le(field, 2)); }
    std::uint32_t u32(const char* field) { return static_cast<std::uint32_t>(le(field, 4)); }
    std::uint64_t u64(const char* field) { return le(field, 8); }
    std::span<const std::byte> raw(const char* field, std::size_t n);
    // Refuses a string longer than max_len.
    std::string string(const char* field, std::size_t max_len);
    template <class T>
    T pod(const char* field) {
        static_assert(std::is_trivially_copyable_v<T>);
        check_size(field, u32(field), sizeof(T));
        T v;
        std::memcpy(&v, raw(field, sizeof(T)).data(), sizeof(T));
        return v;
    }
    // Refuses more than max_count elements, and a count the remaining input cannot hold.
    template <class T>
    std::vector<T> pod_array(const char* field, std::size_t max_count) {
        static_assert(std::is_trivially_copyable_v<T>);
        check_size(field, u32(field), sizeof(T));
        const std::size_t n = count(field, max_count, sizeof(T));
        std::vector<T> v(n);
        if (n != 0) std::memcpy(v.data(), raw(field, n * sizeof(T)).data(), n * sizeof(T));
        return v;
    }
    // A u32 element count, at most max_count and at most remaining() / min_element_bytes.
    std::size_t count(const char* field, std::size_t max_count, std::size_t min_element_bytes);

    std::size_t offset() const noexcept { return pos_; }
    std::size_t remaining() const noexcept { return in_.size() - pos_; }
    // Throws FormatError "<what>: <field> <message> (at byte N)".
    [[noreturn]] void fail(const char* field, const std::string& message) const;

private:
    std::uint64_t le(const char* field, int n);
    void check_size(const char* field, std::uint32_t got, std::size_t want) const;

    std::span<const std::byte> in_;
    std::size_t pos_ = 0;
    std::string what_;
};

} // namespace ember
