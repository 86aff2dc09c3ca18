#!/usr/bin/env python3
"""Hostile HTTP clients against Ember's API socket, while a guest runs.

Each hostile client holds its connection open; meanwhile well-behaved requests must still be
answered promptly. Exits non-zero if any check fails. Usage: bad_clients.py SOCKET
"""
import json
import socket
import sys
import time

SOCK = sys.argv[1]
failures = 0


def check(ok, what):
    global failures
    print(("ok: " if ok else "FAIL: ") + what, flush=True)
    if not ok:
        failures += 1


def conn(timeout=10.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(SOCK)
    return s


def request(method, path, body=b"", headers=None, raw=None):
    """One request on a fresh connection; returns (status, body) or (None, error)."""
    s = conn()
    try:
        if raw is None:
            h = {"Host": "localhost", "Connection": "close"}
            if body:
                h["Content-Type"] = "application/json"
                h["Content-Length"] = str(len(body))
            h.update(headers or {})
            raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
                f"{k}: {v}\r\n".encode() for k, v in h.items()) + b"\r\n" + body
        s.sendall(raw)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/") else None
        return status, rest
    except OSError as e:
        return None, str(e).encode()
    finally:
        s.close()


def healthy(deadline_s=3.0):
    t0 = time.monotonic()
    status, body = request("GET", "/")
    return status == 200 and b'"state"' in body and time.monotonic() - t0 < deadline_s


held = []

# 1. A partial request: headers never finished.
s = conn()
s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
held.append(s)
# 2. Content-Length larger than what is sent.
s = conn()
s.sendall(b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{\"action_type\"")
held.append(s)
# 3. A client that pipelines many requests and never reads the answers.
s = conn()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n" * 2000)
except OSError:
    pass
held.append(s)
check(healthy(), "API answers while partial, lying and non-reading clients hold connections")

# 4. 100 simultaneous connections, each with a request in flight.
many = [conn() for _ in range(100)]
for c in many:
    c.sendall(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
answered = 0
for c in many:
    try:
        if c.recv(65536).startswith(b"HTTP/1.1 200"):
            answered += 1
    except OSError:
        pass
    c.close()
check(answered == 100, f"100 simultaneous connections answered ({answered}/100)")

# 5. Invalid UTF-8 in a JSON body.
st, body = request("PUT", "/actions", b'{"action_type": "\xff\xfe"}')
check(st == 400 and b"fault_message" in body, f"invalid UTF-8 body -> {st}")

# 6. A header flood.
flood = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-Flood-%d: %s\r\n" % (i, b"a" * 100) for i in range(1000)) + b"\r\n"
st, body = request("GET", "/", raw=flood)
check(st in (400, None), f"header flood refused ({st})")

# 7. A body over the 51200-byte limit.
st, body = request("PUT", "/boot-source", b"{" + b" " * 60000 + b"}")
check(st == 400 and b"over the limit" in body, f"oversized body -> {st}")

# 8. A chunked body is accepted and parsed.
chunked = (b"PATCH /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"b\r\n{\"state\": \"\r\n" b"a\r\nSleeping\"}\r\n" b"0\r\n\r\n")
st, body = request("PATCH", "/vm", raw=chunked)
check(st == 400 and b"unknown vm state" in body, f"chunked body parsed ({st} {body[:80]!r})")

# 9. Garbage that is not HTTP at all.
st, body = request("GET", "/", raw=b"\x00\x01\x02 not http\r\n\r\n")
check(st in (400, None), f"non-HTTP bytes refused ({st})")

# 10. Method and path errors keep Firecracker's 400 + fault_message.
st, body = request("DELETE", "/")
check(st == 400 and json.loads(body).get("fault_message"), f"DELETE / -> {st}")

check(healthy(), "API healthy after all hostile clients")
for s in held:
    s.close()
check(healthy(), "API healthy after the hostile clients disconnected")
sys.exit(1 if failures else 0)
