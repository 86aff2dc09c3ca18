#pragma once
// The host side of virtio-vsock: Firecracker's unix-socket scheme (firecracker docs/vsock.md),
// a multiplexer between guest stream connections and host AF_UNIX stream sockets.
//   - Host-initiated: a host process connects to `uds_path` and writes "CONNECT <port>\n"; the
//     muxer sends REQUEST to the guest's <port> from a fresh local port, and on RESPONSE writes
//     "OK <local port>\n" to the host socket; on RST it closes the host socket.
//   - Guest-initiated: a guest REQUEST to CID 2 port P connects to "<uds_path>_<P>"; RESPONSE
//     on success, RST if nothing listens there.
// Flow control (virtio 1.2 §5.10.6.3): toward the guest, the host socket is read only while the
// guest has credit (and at most that many bytes); from the guest, at most CONN_BUF_ALLOC bytes
// per connection are accepted and not yet written to the host socket, which is what we
// advertise. Nothing is buffered without bound; a guest exceeding its credit is reset.
//
// Threading: every method runs under the device lock (`mu`), and so do the socket readiness
// handlers, which then call `kick` (the device's rx pump). Nothing blocks: every fd is
// non-blocking, readiness comes from the io_context.

#include "devices/virtio/vsock/request.hpp"
#include "vmm/base/metrics.hpp"
#include "vmm/base/unique_fd.hpp"

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace ember::virtio::vsock {

// Per-connection buffer for guest bytes the host socket has not taken yet; advertised to the
// guest as buf_alloc (Firecracker's CONN_TX_BUF_SIZE is 256 KiB too).
inline constexpr std::uint32_t CONN_BUF_ALLOC = 256 * 1024;
// Send the guest a CREDIT_UPDATE once this many bytes were forwarded since the last header it
// got from us (Linux: VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
inline constexpr std::uint32_t CREDIT_UPDATE_THRESHOLD = 64 * 1024;
// Bound on control packets waiting for rx buffers that belong to no connection (RSTs answering
// stray packets); more are dropped (the guest times out), as Firecracker's MUXER_RXQ_SIZE.
inline constexpr std::size_t MAX_STRAY_RST = 256;
// At most this many connections (Firecracker: muxer.rs defs::MAX_CONNECTIONS).
inline constexpr std::size_t MAX_CONNECTIONS = 1023;
// First local port handed to host-initiated connections (Firecracker starts at 1 << 30).
inline constexpr std::uint32_t FIRST_LOCAL_PORT = 1u << 30;
// A host-initiated connection whose REQUEST the guest answers neither with RESPONSE nor RST
// within this time is reset and its host socket closed (Firecracker's CONN_REQUEST_TIMEOUT_MS,
// devices/virtio/vsock/csm/mod.rs: 2000 ms, counted from when REQUEST reaches the rxq).
inline constexpr std::chrono::milliseconds CONN_REQUEST_TIMEOUT{2000};

// Binds and listens on `path` as Firecracker's VsockUnixBackend::new does: an existing file
// at the path is an error (EADDRINUSE), nothing is unlinked. Throws ConfigError (empty or too
// long path) or SystemError naming the path.
UniqueFd bind_uds(const std::string& path);
// PUT /vsock binds at once (Firecracker's VsockBuilder::insert builds the backend, which binds),
// so host clients may connect before InstanceStart; the socket waits here until the device
// built at boot takes it (Muxer::listen). Parking a second socket for a path replaces the first.
void park_listener(const std::string& path, UniqueFd fd);
// The parked socket for `path`, or an invalid fd if none.
UniqueFd take_parked_listener(const std::string& path) noexcept;

struct VsockMetrics {
    std::atomic<std::uint64_t> activate_fails{0}, cfg_fails{0}, rx_queue_event_fails{0}, tx_queue_event_fails{0},
        ev_queue_event_fails{0}, muxer_event_fails{0}, conn_event_fails{0}, rx_queue_event_count{0},
        tx_queue_event_count{0}, rx_bytes_count{0}, tx_bytes_count{0}, rx_packets_count{0}, tx_packets_count{0},
        conns_added{0}, conns_killed{0}, conns_removed{0}, killq_resync{0}, tx_flush_fails{0}, tx_write_fails{0},
        rx_read_fails{0};
    MetricValues values() const {
        return {{"activate_fails", value_of(activate_fails)},
                {"cfg_fails", value_of(cfg_fails)},
                {"rx_queue_event_fails", value_of(rx_queue_event_fails)},
                {"tx_queue_event_fails", value_of(tx_queue_event_fails)},
                {"ev_queue_event_fails", value_of(ev_queue_event_fails)},
                {"muxer_event_fails", value_of(muxer_event_fails)},
                {"conn_event_fails", value_of(conn_event_fails)},
                {"rx_queue_event_count", value_of(rx_queue_event_count)},
                {"tx_queue_event_count", value_of(tx_queue_event_count)},
                {"rx_bytes_count", value_of(rx_bytes_count)},
                {"tx_bytes_count", value_of(tx_bytes_count)},
                {"rx_packets_count", value_of(rx_packets_count)},
                {"tx_packets_count", value_of(tx_packets_count)},
                {"conns_added", value_of(conns_added)},
                {"conns_killed", value_of(conns_killed)},
                {"conns_removed", value_of(conns_removed)},
                {"killq_resync", value_of(killq_resync)},
                {"tx_flush_fails", value_of(tx_flush_fails)},
                {"tx_write_fails", value_of(tx_write_fails)},
                {"rx_read_fails", value_of(rx_read_fails)}};
    }
};

class Muxer {
public:
    Muxer(boost::asio::io_context& io, std::mutex& mu, std::uint64_t guest_cid, std::string uds_path, VsockMetrics& metrics,
          std::function<void()> kick);
    ~Muxer();
    Muxer(const Muxer&) = delete;
    Muxer& operator=(const Muxer&) = delete;

    // Listens on uds_path: the socket parked for it by PUT /vsock, else a fresh bind_uds().
    void listen();
    // Starts (or stops) serving: while stopped, nothing is read from host sockets; on stop every
    // connection is closed (a device reset drops all connections, §5.10.6.6).
    void start();
    void reset() noexcept;

    // A packet from the guest (txq). Never fails the device: bad packets reset their connection.
    void send(const Header& h, std::span<const iovec> payload) noexcept;
    // Whether next_rx() may produce a packet.
    bool has_pending_rx() const noexcept { return !pending_.empty() || !stray_.empty(); }
    // Produces the next packet for the guest into `hdr` and `buf` (payload at most
    // buf.size() bytes). Returns false when nothing was ready after all.
    bool next_rx(Header& hdr, std::span<std::byte> buf, std::uint32_t& len) noexcept;

    std::size_t connection_count() const noexcept { return conns_.size(); }

private:
    enum class ConnState {
        AwaitConnectLine, // host connected to uds_path, "CONNECT <port>\n" not read yet
        LocalInit,        // REQUEST sent to the guest, RESPONSE awaited
        Established,
    };
    // Control packets owed to the guest, in the order they go out.
    enum Pending : unsigned {
        P_REQUEST = 1,
        P_RESPONSE = 2,
        P_RST = 4,
        P_SHUTDOWN = 8,
        P_CREDIT_UPDATE = 16,
        P_DATA = 32, // the host socket was readable
    };
    struct Conn {
        std::uint64_t id = 0;
        std::uint32_t local_port = 0, peer_port = 0;
        ConnState state = ConnState::AwaitConnectLine;
        std::unique_ptr<boost::asio::posix::stream_descriptor> sd;
        Credit credit;
        std::vector<std::byte> out; // guest bytes for the host socket, from out_off on
        std::size_t out_off = 0;
        std::string line;            // CONNECT line read so far
        unsigned pending = 0;
        bool queued = false;         // in pending_
        bool read_armed = false, write_armed = false;
        bool host_eof = false;       // the host socket read 0: guest told SHUTDOWN(SEND)
        bool peer_shut_rcv = false, peer_shut_send = false;
        bool dead = false;           // RST queued; removed once it is sent
        // LocalInit: when an unanswered REQUEST times out (set once REQUEST is handed to the rxq).
        std::optional<std::chrono::steady_clock::time_point> expiry;
        int fd() const;
    };
    using Key = std::uint64_t; // local_port << 32 | peer_port
    static Key key(std::uint32_t local, std::uint32_t peer) noexcept { return std::uint64_t{local} << 32 | peer; }

    void arm_accept() noexcept;
    void on_accept() noexcept;
    void arm_read(Conn& c) noexcept;
    void arm_write(Conn& c) noexcept;
    void on_readable(Key k, std::uint64_t id) noexcept;
    void on_writable(Key k, std::uint64_t id) noexcept;
    void read_connect_line(Key k, Conn& c) noexcept;
    void guest_request(const Header& h) noexcept;
    void flush_out(Conn& c) noexcept;
    void queue(Key k, Conn& c, unsigned what) noexcept;
    void kill(Key k, Conn& c) noexcept; // RST to the guest, host socket closed
    void remove(Key k) noexcept;
    void stray_rst(const Header& h) noexcept;
    void maybe_finish(Key k, Conn& c) noexcept;
    void arm_expiry(std::chrono::steady_clock::time_point when) noexcept;
    void on_expiry() noexcept;
    std::uint32_t alloc_local_port() noexcept;
    Header base_header(const Conn& c, Op op) noexcept;

    boost::asio::io_context& io_;
    std::mutex& mu_;
    std::uint64_t guest_cid_;
    std::string uds_path_;
    VsockMetrics& metrics_;
    std::function<void()> kick_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> listener_;
    bool accept_armed_ = false;
    boost::asio::steady_timer expiry_timer_;
    std::optional<std::chrono::steady_clock::time_point> expiry_armed_; // when the timer fires
    bool running_ = false;
    std::map<Key, Conn> conns_;
    std::deque<Key> pending_;
    std::deque<Header> stray_;
    std::uint64_t next_id_ = 1;
    std::uint32_t next_local_port_ = FIRST_LOCAL_PORT;
    // Alive while the muxer is: handlers check it before taking the lock (they may run after
    // the muxer was destroyed only with an error code, which they test first).
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

} // namespace ember::virtio::vsock
