#!/usr/bin/env python3
"""The `ember run` guest agent (guest-kernels/agent/ember_agent.c) on this host, without a VM:
`agent_host_test.py AGENT [CASE...]` starts `AGENT --fd N` on one end of a socketpair per case and
drives the other end with run_client.py (an independent implementation of the protocol). Covers
what the agent does between its vsock connection and its reboot: exit statuses, signals both
ways, stdin/stdout/stderr (binary, 8 MiB, credit window respected), argv/env/cwd fidelity with
1 MiB of arguments, start failures, a pty, a slow reader, background children holding the pipes,
and protocol errors. The PID 1 part (mounts, vsock connect, reboot) needs a VM.
"""
import errno
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run_client as rc  # noqa: E402

AGENT = sys.argv[1]
WINDOW = 256 * 1024
failures = []


def check(name, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + name + ("" if cond else "  " + detail), flush=True)
    if not cond:
        failures.append(name)


def start():
    a, b = socket.socketpair()
    p = subprocess.Popen([AGENT, "--fd", str(b.fileno())], pass_fds=[b.fileno()])
    b.close()
    return a, p


def one(argv, **kw):
    """One run; returns (result, agent exit status)."""
    a, p = start()
    try:
        r = rc.run(a, argv, **kw)
    finally:
        a.close()
    return r, p.wait(timeout=20)


def case_status():
    for code in (0, 1, 7, 255):
        r, st = one(["sh", "-c", "exit %d" % code])
        check("exit %d" % code, r.exit == (rc.EXIT_CODE, code, "") and st == 0, repr((r.exit, st)))
    r, _ = one(["sh", "-c", "kill -USR1 $$"])
    check("killed by SIGUSR1", r.exit[:2] == (rc.EXIT_SIGNAL, signal.SIGUSR1) and rc.status(r) == 128 + 10,
          repr(r.exit))


def case_signal():
    t0 = time.time()
    r, _ = one(["sh", "-c", "echo started; exec sleep 30"], signals=[signal.SIGINT])
    check("host SIGINT reaches the command", r.exit[:2] == (rc.EXIT_SIGNAL, signal.SIGINT) and
          time.time() - t0 < 10, repr(r.exit))
    r, _ = one(["sh", "-c", "trap 'echo got-term; exit 5' TERM; echo started; while :; do sleep 0.05; done"],
               signals=[signal.SIGTERM])
    check("host SIGTERM handled by the command", r.exit == (rc.EXIT_CODE, 5, "") and b"got-term" in r.stdout,
          repr((r.exit, r.stdout)))


def case_streams():
    data = os.urandom(8 << 20)
    r, _ = one(["sh", "-c", "tee /dev/stderr"], stdin=data)
    md5 = hashlib.md5(data).hexdigest()
    check("8 MiB binary stdin to stdout and stderr, kept apart",
          hashlib.md5(r.stdout).hexdigest() == md5 and hashlib.md5(r.stderr).hexdigest() == md5 and
          r.exit == (rc.EXIT_CODE, 0, ""), "%d/%d bytes" % (len(r.stdout), len(r.stderr)))
    check("stdin outstanding within the window", 0 < r.max_outstanding <= WINDOW, str(r.max_outstanding))
    r, _ = one(["cat"], stdin=b"hello\n")
    check("stdin EOF passed on", r.stdout == b"hello\n" and r.exit[1] == 0, repr(r.stdout))
    r, _ = one(["head", "-c", "10"], stdin=os.urandom(4 << 20))
    check("command stops reading stdin early", len(r.stdout) == 10 and r.exit == (rc.EXIT_CODE, 0, ""),
          repr(r.exit))
    r, _ = one(["sh", "-c", "head -c 3000000 /dev/zero; echo end >&2"], read_delay=0.002)
    check("slow reader gets every byte", len(r.stdout) == 3000000 and r.stderr == b"end\n", str(len(r.stdout)))
    r, _ = one(["sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done"])
    check("order kept per stream", r.stdout == b"out1\nout2\nout3\n" and r.stderr == b"err1\nerr2\nerr3\n",
          repr((r.stdout, r.stderr)))


def case_argv():
    args = ["a b", "'q'", '"dq"', "", "é ☃ \x01", "-c", "$HOME", "x" * 100000]
    args += ["%04d" % i + "y" * 496 for i in range(2000)]  # 1 MiB of arguments
    r, _ = one(["sh", "-c", 'printf "%s\\0" "$@"', "sh"] + args, exec_chunk=4096)
    got = r.stdout.split(b"\0")[:-1]
    check("argv exact (1 MiB, spaces, quotes, empty, non-ASCII)", got == [a.encode() for a in args],
          "%d args back" % len(got))
    r, _ = one(["sh", "-c", 'echo "$FOO|$PWD|$HOME|$EMPTY|${PATH%%:*}"'],
               env=["FOO=a b=c", "EMPTY=", "HOME=/h"], cwd="/tmp")
    check("env and cwd", r.stdout == b"a b=c|/tmp|/h||/usr/local/sbin\n", repr(r.stdout))


def case_start_failure():
    r, st = one(["/nonexistent/cmd"])
    check("missing command", r.exit[:2] == (rc.EXIT_START, errno.ENOENT) and
          "cannot run '/nonexistent/cmd'" in r.exit[2] and st == 0, repr(r.exit))
    r, _ = one(["true"], cwd="/nonexistent-dir")
    check("missing cwd", r.exit[:2] == (rc.EXIT_START, errno.ENOENT) and "directory" in r.exit[2], repr(r.exit))
    r, _ = one(["/dev/null"])
    check("not executable", r.exit[:2] == (rc.EXIT_START, errno.EACCES), repr(r.exit))


def case_tty():
    r, _ = one(["sh", "-c", "stty size; tty; echo to-stderr >&2"], tty=True, rows=33, cols=101)
    out = r.stdout.replace(b"\r\n", b"\n")
    check("pty with the given size, one stream", out.startswith(b"33 101\n/dev/pts/") and b"to-stderr" in out and
          not r.stderr and r.exit[1] == 0, repr((r.stdout, r.stderr)))
    r, _ = one(["cat"], tty=True, stdin=b"line\n")
    check("pty EOF (^D) ends cat", r.exit == (rc.EXIT_CODE, 0, "") and b"line" in r.stdout, repr(r.exit))


def case_children():
    t0 = time.time()
    r, _ = one(["sh", "-c", "(sleep 3; echo late) & echo now; exit 3"])
    dt = time.time() - t0
    check("background child holding the pipes does not delay EXIT", r.exit == (rc.EXIT_CODE, 3, "") and
          r.stdout == b"now\n" and dt < 2, "%.2fs %r" % (dt, r.exit))


def raw(frames, expect_status, name, wait_ready=True, close=False):
    a, p = start()
    if wait_ready:
        hdr = a.recv(16)
        check(name + ": READY first", hdr[:8] == rc.frame(rc.T_READY, 0, b"\0" * 8)[:8] and
              struct.unpack_from("<II", hdr, 8) == (rc.VERSION, WINDOW), repr(hdr))
    try:
        a.sendall(frames)
    except OSError:  # the agent may stop reading (and exit) before the last byte
        pass
    if close:
        a.shutdown(socket.SHUT_WR)
    try:
        st = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        st = "hung"
    a.close()
    check(name, st == expect_status, "agent status %r" % st)


def case_protocol():
    spec = rc.exec_frames(rc.exec_spec(["sleep", "30"]))
    raw(rc.frame(99), 1, "unknown type")
    raw(rc.frame(rc.T_READY, 0, b"\0" * 8), 1, "READY sent to the agent")
    raw(rc.frame(rc.T_DATA, rc.CH_STDIN, b"x"), 1, "stdin before EXEC")
    raw(struct.pack("<BBBBI", rc.T_EXEC, 0, 0, 0, rc.MAX_PAYLOAD + 1), 1, "oversized EXEC")
    raw(rc.frame(rc.T_EXEC, 0, b"\0" * 20), 1, "EXEC spec with argc 0")
    # 384 KiB with no credit back: past the 256 KiB window even after the 64 KiB a pipe holds.
    raw(spec + rc.frame(rc.T_DATA, rc.CH_STDIN, b"x" * 65536) * 6, 1, "stdin beyond the window")
    raw(spec + rc.frame(rc.T_SIGNAL, 0, struct.pack("<I", 65)), 1, "signal 65")
    raw(spec + rc.frame(rc.T_EOF, rc.CH_STDIN) * 2, 1, "second EOF")
    raw(spec + rc.frame(rc.T_EXEC, 0, b"x"), 1, "EXEC while running")
    raw(spec, 1, "host closes mid-run: command killed", close=True)
    raw(b"", 1, "host closes before EXEC", close=True)


CASES = {n[5:]: f for n, f in globals().items() if n.startswith("case_")}
for name in sys.argv[2:] or CASES:
    print("== " + name, flush=True)
    CASES[name]()
print("agent_host: %d failure(s)" % len(failures))
sys.exit(1 if failures else 0)
