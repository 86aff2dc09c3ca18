"""Host side of the `ember run` agent protocol (api/run/run_proto.h), written from that
header's description rather than from its code, so tests that use it check the C codec against
the documented format. Used by tests/integration/agent_host_test.py (the agent on this host,
over a socketpair) and by hand against a guest (the agent connecting to <uds_path>_10789).
"""
import os
import selectors
import struct

VSOCK_PORT = 10789
VERSION = 1
MAX_PAYLOAD = 65536
T_READY, T_EXEC, T_DATA, T_EOF, T_CREDIT, T_SIGNAL, T_WINSIZE, T_EXIT = range(1, 9)
CH_CONTROL, CH_STDIN, CH_STDOUT, CH_STDERR = range(4)
F_MORE = 1
EXIT_CODE, EXIT_SIGNAL, EXIT_START = range(3)


class ProtocolError(Exception):
    pass


def frame(ftype, channel=0, payload=b"", flags=0):
    return struct.pack("<BBBBI", ftype, channel, flags, 0, len(payload)) + payload


def exec_spec(argv, env=(), cwd="", tty=False, rows=0, cols=0):
    def z(s):
        b = s.encode() if isinstance(s, str) else s
        return b + b"\0"
    return (struct.pack("<IHHII", 1 if tty else 0, rows, cols, len(argv), len(env)) + z(cwd) +
            b"".join(z(a) for a in argv) + b"".join(z(e) for e in env))


def exec_frames(spec, chunk=MAX_PAYLOAD):
    parts = [spec[i:i + chunk] for i in range(0, len(spec), chunk)]
    return b"".join(frame(T_EXEC, 0, p, F_MORE if i + 1 < len(parts) else 0) for i, p in enumerate(parts))


class Result:
    def __init__(self):
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.exit = None  # (kind, value, text)
        self.max_outstanding = 0


def read_frame(buf):
    """(type, channel, flags, payload, size) of the first whole frame in buf, or None."""
    if len(buf) < 8:
        return None
    ftype, ch, flags, res, length = struct.unpack_from("<BBBBI", buf)
    if res != 0 or length > MAX_PAYLOAD:
        raise ProtocolError("bad header %r" % bytes(buf[:8]))
    if len(buf) < 8 + length:
        return None
    return ftype, ch, flags, bytes(buf[8:8 + length]), 8 + length


def run(sock, argv, env=(), cwd="", stdin=b"", send_eof=True, tty=False, rows=24, cols=80,
        signals=(), exec_chunk=MAX_PAYLOAD, read_delay=None, timeout=60):
    """Drives one run on a connected stream: waits for READY, sends the exec spec in chunks of
    exec_chunk bytes, stdin within the credit window (then EOF if send_eof), each signal in
    `signals` once the first output byte arrived, and collects the output until EXIT. With
    read_delay (seconds) it sleeps before each read, as a slow reader would. Raises
    ProtocolError after `timeout` seconds without anything to do."""
    import time
    res = Result()
    buf = bytearray()
    window = None
    outstanding = 0
    stdin_pos = 0
    eof_sent = False
    pending = bytearray()
    signals = list(signals)
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while res.exit is None:
        if window is not None:
            while stdin_pos < len(stdin) and outstanding < window:
                n = min(MAX_PAYLOAD, window - outstanding, len(stdin) - stdin_pos)
                pending += frame(T_DATA, CH_STDIN, stdin[stdin_pos:stdin_pos + n])
                stdin_pos += n
                outstanding += n
                res.max_outstanding = max(res.max_outstanding, outstanding)
            if stdin_pos == len(stdin) and send_eof and not eof_sent:
                pending += frame(T_EOF, CH_STDIN)
                eof_sent = True
            if signals and (res.stdout or res.stderr):
                pending += frame(T_SIGNAL, 0, struct.pack("<I", signals.pop(0)))
        sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0))
        events = sel.select(timeout=timeout)
        if not events:
            raise ProtocolError("nothing from the agent for %d s" % timeout)
        for _, ev in events:
            if ev & selectors.EVENT_WRITE and pending:
                try:
                    n = sock.send(pending)
                    del pending[:n]
                except BlockingIOError:
                    pass
            if ev & selectors.EVENT_READ:
                if read_delay:
                    time.sleep(read_delay)
                try:
                    data = sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    raise ProtocolError("stream closed before EXIT")
                buf += data
        while True:
            f = read_frame(buf)
            if f is None:
                break
            ftype, ch, flags, payload, size = f
            del buf[:size]
            if ftype == T_READY:
                version, window = struct.unpack("<II", payload)
                if version != VERSION:
                    raise ProtocolError("version %d" % version)
                pending += exec_frames(exec_spec(argv, env, cwd, tty, rows, cols), exec_chunk)
            elif ftype == T_DATA and ch == CH_STDOUT:
                res.stdout += payload
            elif ftype == T_DATA and ch == CH_STDERR:
                res.stderr += payload
            elif ftype == T_CREDIT and ch == CH_STDIN:
                (n,) = struct.unpack("<I", payload)
                outstanding -= n
                if outstanding < 0:
                    raise ProtocolError("credit above what was sent")
            elif ftype == T_EXIT:
                kind, value = struct.unpack_from("<II", payload)
                res.exit = (kind, value, payload[8:].decode(errors="replace"))
            else:
                raise ProtocolError("unexpected frame %d/%d" % (ftype, ch))
    sel.close()
    return res


def status(res):
    """Ember's exit status for a result: the code, 128+N for signal N."""
    kind, value, _ = res.exit
    return value if kind == EXIT_CODE else 128 + value if kind == EXIT_SIGNAL else 127


if __name__ == "__main__":
    # By hand against a guest: run_client.py UDS_PATH -- COMMAND...; listens on UDS_PATH_10789.
    import socket
    import sys
    uds, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1:]
    path = "%s_%d" % (uds, VSOCK_PORT)
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    conn, _ = srv.accept()
    r = run(conn, cmd, stdin=b"" if sys.stdin.isatty() else sys.stdin.buffer.read())
    sys.stdout.buffer.write(r.stdout)
    sys.stderr.buffer.write(r.stderr)
    if r.exit[0] == EXIT_START:
        sys.stderr.write("ember run: %s\n" % r.exit[2])
    conn.close()
    sys.exit(status(r))
