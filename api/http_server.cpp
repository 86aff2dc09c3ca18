#include "api/http_server.hpp"

#include "vmm/base/error.hpp"
#include "vmm/base/logger.hpp"

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <cstring>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace ember::api {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = net::local::stream_protocol;
using Stream = beast::basic_stream<local>;

// True if something accepts connections at `path` (a live Ember or another server).
bool socket_is_live(const std::string& path) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    const bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return live;
}

} // namespace

struct HttpServer::Impl {
    net::io_context io{1};
    local::acceptor acceptor{io};
    HttpLimits limits;
    Dispatcher dispatch;
    std::string path;
    std::atomic<std::size_t> connections{0};

    class Session : public std::enable_shared_from_this<Session> {
    public:
        Session(Impl& srv, local::socket s) : srv_(srv), stream_(std::move(s)) { ++srv_.connections; }
        ~Session() { --srv_.connections; }

        void read() {
            parser_.emplace();
            parser_->body_limit(srv_.limits.max_body);
            parser_->header_limit(static_cast<std::uint32_t>(srv_.limits.max_header));
            stream_.expires_after(srv_.limits.idle_timeout);
            http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
                self->on_read(ec);
            });
        }

    private:
        void on_read(beast::error_code ec) {
            if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == net::error::eof ||
                ec == net::error::connection_reset || ec == net::error::operation_aborted) {
                close();
                return;
            }
            if (ec) {
                // A malformed or oversized request: answer once, then drop the connection, since
                // the stream position of the next request is unknown.
                std::string msg = ec == http::error::body_limit
                                      ? "Request payload with size over the limit of " +
                                            std::to_string(srv_.limits.max_body) + " bytes"
                                      : "Malformed HTTP request: " + ec.message();
                write(Response::bad_request(msg), false, 11);
                return;
            }
            auto req = parser_->release();
            const bool keep = req.keep_alive();
            const unsigned version = req.version();
            HttpRequest r{std::string(req.method_string()), std::string(req.target()), std::move(req.body())};
            auto self = shared_from_this();
            srv_.dispatch(std::move(r), [self, keep, version](Response resp) {
                net::post(self->stream_.get_executor(), [self, keep, version, resp = std::move(resp)]() mutable {
                    self->write(std::move(resp), keep, version);
                });
            });
        }

        void write(Response r, bool keep, unsigned version) {
            res_ = {};
            res_.version(version);
            res_.result(r.status);
            res_.set(http::field::server, "Ember");
            if (!r.body.empty()) res_.set(http::field::content_type, "application/json");
            res_.body() = std::move(r.body);
            res_.keep_alive(keep);
            res_.prepare_payload();
            stream_.expires_after(srv_.limits.idle_timeout);
            http::async_write(stream_, res_, [self = shared_from_this(), keep](beast::error_code ec, std::size_t) {
                if (ec) {
                    self->close();
                } else if (!keep) {
                    self->graceful_close();
                } else {
                    self->read();
                }
            });
        }

        // Half-closes and discards what the client still sends (bounded in bytes and time), so
        // that a client still uploading a refused body reads our answer instead of a reset.
        void graceful_close() {
            beast::error_code ec;
            stream_.socket().shutdown(local::socket::shutdown_send, ec);
            drained_ = 0;
            drain();
        }

        void drain() {
            stream_.expires_after(std::chrono::seconds(2));
            stream_.async_read_some(net::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                self->drained_ += n;
                if (ec || self->drained_ > 1024 * 1024) {
                    self->close();
                    return;
                }
                self->drain();
            });
        }

        void close() {
            beast::error_code ec;
            stream_.socket().shutdown(local::socket::shutdown_both, ec);
            stream_.close();
        }

        Impl& srv_;
        Stream stream_;
        beast::flat_buffer buffer_;
        std::optional<http::request_parser<http::string_body>> parser_;
        http::response<http::string_body> res_;
        std::array<char, 4096> discard_{};
        std::size_t drained_ = 0;
    };

    void accept() {
        acceptor.async_accept([this](beast::error_code ec, local::socket s) {
            if (ec == net::error::operation_aborted) return;
            if (!ec) {
                if (connections.load() >= limits.max_connections) {
                    LOG_WARN("API: refusing a connection, %zu already open", connections.load());
                } else {
                    std::make_shared<Session>(*this, std::move(s))->read();
                }
            }
            accept();
        });
    }
};

HttpServer::HttpServer(const std::string& path, HttpLimits limits, Dispatcher dispatch) : impl_(std::make_unique<Impl>()) {
    impl_->limits = limits;
    impl_->dispatch = std::move(dispatch);
    impl_->path = path;
    if (path.size() >= sizeof(sockaddr_un{}.sun_path)) throw ConfigError("API socket path is too long: " + path);
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) throw ConfigError("API socket path " + path + " exists and is not a socket");
        if (socket_is_live(path)) throw ConfigError("API socket " + path + " is in use by a running process");
        ::unlink(path.c_str()); // stale socket from a process that died
    }
    boost::system::error_code ec;
    impl_->acceptor.open(local(), ec);
    if (!ec) impl_->acceptor.bind(local::endpoint(path), ec);
    if (!ec) impl_->acceptor.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw ConfigError("cannot listen on API socket " + path + ": " + ec.message());
}

HttpServer::~HttpServer() {
    stop();
    ::unlink(impl_->path.c_str());
}

void HttpServer::start() {
    impl_->accept();
    thread_ = std::thread([this] {
        pthread_setname_np(pthread_self(), "ember_api");
        impl_->io.run();
    });
}

void HttpServer::stop() noexcept {
    impl_->io.stop();
    if (thread_.joinable()) thread_.join();
}

} // namespace ember::api
