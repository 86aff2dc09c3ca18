#pragma once
// HTTP/1.1 on a Unix socket (Boost.Beast), on its own thread `ember_api`. Each connection is an
// independent asynchronous session, so a slow or hostile client (partial requests, a client
// that stops reading, header floods, Content-Length lies) only ever holds its own connection
// until its timeout. Requests are handed to a dispatcher that answers exactly once, from any
// thread; the answer is written back on the API thread.

#include "api/routes.hpp"

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace ember::api {

struct HttpRequest {
    std::string method;
    std::string target;
    std::string body;
};

struct HttpLimits {
    std::size_t max_body = 51200;                 // Firecracker's --http-api-max-payload-size default
    std::size_t max_header = 8192;
    std::chrono::seconds idle_timeout{30};        // per read of a request and per write of a reply
    std::size_t max_connections = 256;
};

class HttpServer {
public:
    using Reply = std::function<void(Response)>;
    using Dispatcher = std::function<void(HttpRequest, Reply)>;

    // Binds and listens at `path` (removing a stale socket; refusing a live one). Throws
    // ConfigError with the reason.
    HttpServer(const std::string& path, HttpLimits limits, Dispatcher dispatch);
    ~HttpServer();
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    void start();
    void stop() noexcept;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
    std::thread thread_;
};

} // namespace ember::api
