#pragma once
// The host side of the guest's interactive console: Ember's stdin feeds the UART or, when the
// console is virtio, virtio-console (with back-pressure: stdin is not read while the guest has
// not taken what was read); a terminal on stdin is put in raw mode for the VM's lifetime; and
// SIGWINCH passes the terminal's new size to virtio-console. Runs on the VMM thread's event loop.

#include <boost/asio/io_context.hpp>
#include <memory>
#include <optional>

namespace ember {

class Serial;
namespace virtio::console {
class ConsoleDevice;
struct ConsoleSize;
} // namespace virtio::console

class HostConsole {
public:
    // `virtio_console` null: input goes to the UART. `output_on_stdout`: guest output goes to
    // Ember's stdout, so the terminal size (if stdout is one) is the console's.
    HostConsole(boost::asio::io_context& io, Serial& serial, std::shared_ptr<virtio::console::ConsoleDevice> virtio_console,
                bool output_on_stdout);
    ~HostConsole(); // restores the terminal and stdin's flags
    HostConsole(const HostConsole&) = delete;
    HostConsole& operator=(const HostConsole&) = delete;

    // Starts reading stdin (if it can be polled) and watching SIGWINCH.
    void start();

    // The size of the terminal on stdout, for virtio-console's F_SIZE; none when stdout is not one.
    static std::optional<virtio::console::ConsoleSize> terminal_size() noexcept;

private:
    void read_stdin();
    void feed();
    void watch_terminal_size();

    struct StdinReader;
    boost::asio::io_context& io_;
    Serial& serial_;
    std::shared_ptr<virtio::console::ConsoleDevice> virtio_;
    bool output_on_stdout_;
    std::unique_ptr<StdinReader> stdin_;
    struct Winch;
    std::unique_ptr<Winch> winch_;
};

} // namespace ember
