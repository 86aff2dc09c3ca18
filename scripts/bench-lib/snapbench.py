"""Snapshot figures for measure.py's `snap` group (imported by measure.py; needs /dev/kvm).

Guest: the bench kernel and initrd, 1 vCPU / 256 MiB, whose init runs SNAP_CMD: optionally fill
a tmpfs with DIRTY_MIB MiB of random bytes, print SNAP_READY, then answer every console line with
PONG<line>. A VMM run pings its console every PING_INTERVAL_S (a restore from its exec on, a cold
boot from SNAP_READY on), so "responding" means the same thing for a cold boot and a restore, and
for Ember and QEMU: exec to the first PONG line on the VMM's stdout (resolution PING_INTERVAL_S).

Per source kind (idle: nothing written; dirty128: DIRTY_MIB written):
  Ember: boot with --api-sock and --config-file, wait for SNAP_READY, PATCH /vm Paused and
         PUT /snapshot/create Full into the L1's tmpfs; record the PUT's wall time, Ember's own
         "snapshot created ... in N us" log line, the memory file's allocated bytes and the state
         file's bytes.
  QEMU:  boot the same guest with a QMP socket, wait for SNAP_READY, QMP migrate to
         "exec:cat > FILE" (QEMU 7.2 has no file: URI), poll query-migrate to "completed";
         record the migration's total time and the file's bytes.
Restore (idle snapshot, `runs` rounds, Ember and QEMU interleaved, alternating who goes first):
  Ember: exec `ember --api-sock`, connect, PUT /snapshot/load {File, resume_vm: true}; exec to
         first PONG, the PUT's wall time and Ember's "snapshot loaded ... in N us".
  QEMU:  exec with -incoming "exec:cat FILE" (reads the whole state eagerly); exec to first PONG.
Cold boot (same rounds): each VMM booted from scratch with the same command; exec to first PONG.
Fan-out (Ember only): scripts/clone restores the idle snapshot once alone, then FANOUT clones at
once from the one memory file; each clone's time from the common exec moment to its console
answer (p50, p95), and the clones' summed Rss and Pss once all answered.
"""
import json
import os
import re
import socket
import subprocess
import threading
import time

DIRTY_MIB = 128
PING_INTERVAL_S = 0.01
SNAP_TIMEOUT_S = 120
SNAP_RUN_TIMEOUT_S = 90
FANOUT = 8
CLONE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "clone")


def snap_cmd(dirty):
    fill = (f"mkdir -p /d && mount -t tmpfs -o size={DIRTY_MIB + 16}m d /d && "
            f"dd if=/dev/urandom of=/d/x bs=1M count={DIRTY_MIB} 2>/dev/null; ") if dirty else ""
    return fill + "echo SNAP_READY; while read l; do echo PONG$l; done"


class Pinger:
    """Writes "p\\n" to a VMM's stdin every PING_INTERVAL_S until stopped or the pipe breaks."""

    def __init__(self, run):
        self.run, self.stop = run, threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                self.run.proc.stdin.write(b"p\n")
                self.run.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return
            self.stop.wait(PING_INTERVAL_S)


def http(path_sock, method, path, body=None, timeout=SNAP_TIMEOUT_S):
    """One HTTP/1.1 request on a Unix socket; (status, body text, wall ms)."""
    data = b"" if body is None else json.dumps(body).encode()
    req = (f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
    t = time.monotonic()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path_sock)
        s.sendall(req)
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            head, sep, rest = buf.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"Content-Length:\s*(\d+)", head, re.I)
                if m is None or len(rest) >= int(m.group(1)):
                    break
    finally:
        s.close()
    ms = (time.monotonic() - t) * 1000.0
    status = int(buf.split(b" ", 2)[1]) if buf.startswith(b"HTTP/1.1 ") else 0
    return status, buf.partition(b"\r\n\r\n")[2].decode(errors="replace"), ms


def wait_socket(path, run, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return True
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        finally:
            s.close()
        time.sleep(0.0005)
    return False


def log_us(run, what):
    """N from Ember's "snapshot WHAT: ... in N us" log line (stderr), once it is there."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with run.cond:
            for line in run.tail["stderr"]:
                m = re.search(rf"snapshot {what}: .* in (\d+) us", line)
                if m:
                    return int(m.group(1))
        time.sleep(0.05)
    return None


def allocated(path):
    return os.stat(path).st_blocks * 512


class Qmp:
    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.s.settimeout(timeout)
        self.f = self.s.makefile("rb")
        self._read()                       # the greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name, **arguments):
        req = {"execute": name}
        if arguments:
            req["arguments"] = arguments
        self.s.sendall(json.dumps(req).encode() + b"\n")
        rep = self._read()
        if "error" in rep:
            raise RuntimeError(f"QMP {name}: {rep['error']}")
        return rep.get("return")

    def close(self):
        self.f.close()
        self.s.close()


def ember_source(m, st, dirty, d):
    """Boots Ember with an API socket, lets the guest get ready, snapshots it Full into d."""
    sock = f"{d}/src.sock"
    argv, env = m.vmm_argv("ember", st, 1, 256, snap_cmd(dirty), f"snapsrc-{dirty}")
    argv = [a if a != "--no-api" else "--api-sock" for a in argv]
    argv.insert(argv.index("--api-sock") + 1, sock)
    r = m.VmmRun(argv, env, stdin=subprocess.PIPE, markers=("SNAP_READY",))
    try:
        if r.wait_marker("SNAP_READY", m.RUN_TIMEOUT_S + (60 if dirty else 0)) is None:
            return r.failure("no SNAP_READY from the source guest"), None
        status, body, pause_ms = http(sock, "PATCH", "/vm", {"state": "Paused"})
        if status != 204:
            return r.failure(f"pause: {status} {body}"), None
        snap, mem = f"{d}/ember-{dirty}.snap", f"{d}/ember-{dirty}.mem"
        status, body, ms = http(sock, "PUT", "/snapshot/create",
                                {"snapshot_type": "Full", "snapshot_path": snap,
                                 "mem_file_path": mem})
        if status != 204:
            return r.failure(f"snapshot/create: {status} {body}"), None
        us = log_us(r, "created")
        return {"ok": True, "value": ms, "ember_log_create_ms": None if us is None else us / 1e3,
                "mem_allocated_mib": allocated(mem) / 2**20,
                "mem_apparent_mib": os.stat(mem).st_size / 2**20,
                "state_kib": os.stat(snap).st_size / 1024,
                "size_mib": (allocated(mem) + os.stat(snap).st_size) / 2**20}, (snap, mem)
    finally:
        m.finish(r, {})


def qemu_argv(m, st, cmd, tag, d, extra):
    argv, env = m.vmm_argv("qemu", st, 1, 256, cmd, tag)
    return argv + extra, env


def qemu_source(m, st, dirty, d):
    """Boots QEMU with a QMP socket, lets the guest get ready, migrates it into a file in d."""
    qmp_path, state = f"{d}/qmp-{dirty}.sock", f"{d}/qemu-{dirty}.vmstate"
    argv, env = qemu_argv(m, st, snap_cmd(dirty), f"snapsrc-{dirty}", d,
                          ["-qmp", f"unix:{qmp_path},server=on,wait=off"])
    r = m.VmmRun(argv, env, stdin=subprocess.PIPE, markers=("SNAP_READY",))
    try:
        if r.wait_marker("SNAP_READY", m.RUN_TIMEOUT_S + (60 if dirty else 0)) is None:
            return r.failure("no SNAP_READY from the source guest"), None
        q = Qmp(qmp_path, 20)
        try:
            t = time.monotonic()
            q.cmd("migrate", uri=f"exec:cat > {state}")
            deadline = t + SNAP_TIMEOUT_S
            while True:
                info = q.cmd("query-migrate")
                if info.get("status") == "completed":
                    break
                if info.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                    return r.failure(f"migrate: {info}"), None
                time.sleep(0.005)
            ms = (time.monotonic() - t) * 1000.0
        finally:
            q.close()
        size = os.stat(state).st_size
        return {"ok": True, "value": ms, "qemu_total_time_ms": info.get("total-time"),
                "qemu_downtime_ms": info.get("downtime"), "size_mib": size / 2**20,
                "mem_allocated_mib": allocated(state) / 2**20}, state
    except Exception as e:  # noqa: BLE001 - reported as a failed sample
        return r.failure(f"QMP: {e!r}"), None
    finally:
        m.finish(r, {})


def respond(m, r, t_limit):
    """Pings until the first PONG; ms from the run's exec, or None."""
    p = Pinger(r)
    try:
        t = r.wait_marker("PONG", t_limit)
    finally:
        p.stop.set()
    return None if t is None else t * 1000.0


def ember_restore(m, st, snap, mem, d, i):
    sock = f"{d}/restore-{i}.sock"
    exe, env = st["ember"]
    r = m.VmmRun([exe, "--api-sock", sock, "--level", "Info"], env, stdin=subprocess.PIPE,
                 markers=("PONG",))

    def measure():
        if not wait_socket(sock, r, m.RUN_TIMEOUT_S):
            return r.failure("API socket never accepted")
        status, body, ms = http(sock, "PUT", "/snapshot/load",
                                {"snapshot_path": snap,
                                 "mem_backend": {"backend_type": "File", "backend_path": mem},
                                 "resume_vm": True})
        if status != 204:
            return r.failure(f"snapshot/load: {status} {body}")
        t = respond(m, r, SNAP_RUN_TIMEOUT_S)
        if t is None:
            return r.failure("no PONG after the restore")
        us = log_us(r, "loaded")
        return {"ok": True, "value": t, "load_put_ms": ms,
                "vmm_load_ms": None if us is None else us / 1e3}
    try:
        return m.finish(r, m.guarded(r, measure))
    finally:
        if os.path.exists(sock):
            os.unlink(sock)


def qemu_restore(m, st, state, d, i):
    argv, env = qemu_argv(m, st, snap_cmd(False), "snaprestore", d,
                          ["-incoming", f"exec:cat {state}"])
    r = m.VmmRun(argv, env, stdin=subprocess.PIPE, markers=("PONG",))

    def measure():
        t = respond(m, r, SNAP_RUN_TIMEOUT_S)
        return r.failure("no PONG after the restore") if t is None else {"ok": True, "value": t}
    return m.finish(r, m.guarded(r, measure))


def cold_to_respond(m, st, vmm):
    argv, env = m.vmm_argv(vmm, st, 1, 256, snap_cmd(False), "snapcold")
    r = m.VmmRun(argv, env, stdin=subprocess.PIPE, markers=("PONG", "SNAP_READY"))

    def measure():
        # Pinging starts at SNAP_READY: QEMU's 16550 stops taking console input for good when
        # its receive FIFO fills before the guest's driver runs (seen on 7.2: never a PONG).
        if r.wait_marker("SNAP_READY", SNAP_RUN_TIMEOUT_S) is None:
            return r.failure("no SNAP_READY from the guest")
        t = respond(m, r, SNAP_RUN_TIMEOUT_S)
        return r.failure("no PONG after boot") if t is None else {"ok": True, "value": t}
    return m.finish(r, m.guarded(r, measure))


def fanout(m, st, snap, mem, d):
    """scripts/clone -n FANOUT --baseline on the idle snapshot; one sample of Ember figures."""
    out = f"{d}/clone.json"
    exe, env = st["ember"]
    argv = ["python3", CLONE, "-n", str(FANOUT), "--snapshot", snap, "--mem", mem, "--baseline",
            "--ember", exe, "--dir", f"{d}/clones", "--json", out, "--send", "ping {i}",
            "--expect", r"PONGping {i}$", "--timeout", str(SNAP_RUN_TIMEOUT_S)]
    try:
        p = subprocess.run(argv, env=env, capture_output=True, text=True,
                           timeout=3 * SNAP_RUN_TIMEOUT_S + 60)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": "scripts/clone timed out"}
    try:
        with open(out) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return {"ok": False, "error": f"scripts/clone exit {p.returncode}",
                "stderr_tail": p.stderr.splitlines()[-8:]}
    if p.returncode != 0 or not r.get("ok") or not r.get("rounds"):
        return {"ok": False, "error": f"scripts/clone exit {p.returncode}",
                "stderr_tail": p.stderr.splitlines()[-8:]}
    rnd, s = r["rounds"][0], r["rounds"][0]["summary"]["t_respond"]
    base = r["baseline"]["clones"][0]
    return {"ok": True, "value": s["p95"], "p50_ms": s["p50"], "baseline_ms": base["t_respond"],
            "p95_over_one": s["p95"] / base["t_respond"] if base["t_respond"] else None,
            "loaded_p95_ms": rnd["summary"]["t_loaded"]["p95"],
            "rss_mib": rnd["rss_kib"] / 1024, "pss_mib": rnd["pss_kib"] / 1024,
            "ram_rss_mib": rnd["ram_rss_kib"] / 1024, "ram_pss_mib": rnd["ram_pss_kib"] / 1024,
            "one_rss_mib": r["baseline"]["rss_kib"] / 1024, "clones": FANOUT}


def run(m, args, st, base, save_fn):
    """All snapshot figures; calls save_fn(partial results) after each figure."""
    d = f"{base}/snap"
    os.makedirs(d, exist_ok=True)
    res, made = {}, {}
    for dirty in (False, True):
        kind = "dirty128" if dirty else "idle"
        res[f"create_{kind}"] = {"ember": [], "qemu": []}
        for vmm, fn in (("ember", ember_source), ("qemu", qemu_source)):
            s, out = fn(m, st, dirty, d)
            s["run"] = 0
            res[f"create_{kind}"][vmm].append(s)
            made[(vmm, dirty)] = out
            m.log(f"snapshot create {kind} {vmm}: " +
                  (f"{s['value']:.0f} ms, {s['size_mib']:.1f} MiB" if s["ok"]
                   else f"FAILED ({s['error']})"))
            save_fn(res)
        # The dirty files only serve the size and create figures.
        if dirty:
            for vmm in ("ember", "qemu"):
                out = made.pop((vmm, True))
                for p in (out if isinstance(out, tuple) else (out,)) if out else ():
                    os.unlink(p)
    ember_out, qemu_out = made.get(("ember", False)), made.get(("qemu", False))

    def restore(vmm, i):
        if vmm == "ember":
            return (ember_restore(m, st, *ember_out, d, i) if ember_out
                    else {"ok": False, "error": "no Ember snapshot"})
        return (qemu_restore(m, st, qemu_out, d, i) if qemu_out
                else {"ok": False, "error": "no QEMU snapshot"})
    res["restore_to_respond"] = m.interleaved(args.runs, ["ember", "qemu"], restore_counter(restore),
                                              "restore to respond ms")
    save_fn(res)
    if ember_out:
        s = fanout(m, st, *ember_out, d)
        s["run"] = 0
        res["fanout"] = {"ember": [s]}
        m.log(f"fan-out of {FANOUT}: " + (
            f"answered p50 {s['p50_ms']:.0f} p95 {s['value']:.0f} ms (one alone "
            f"{s['baseline_ms']:.0f} ms); sum Rss {s['rss_mib']:.0f} MiB, Pss {s['pss_mib']:.0f} MiB"
            if s["ok"] else f"FAILED ({s['error']})"))
        save_fn(res)
    res["cold_to_respond"] = m.interleaved(args.runs, ["ember", "qemu"],
                                           lambda v: cold_to_respond(m, st, v),
                                           "cold boot to respond ms")
    save_fn(res)
    return res


def restore_counter(fn):
    """interleaved() passes only the VMM's name; this adds a per-call index (socket names)."""
    n = [0]

    def call(vmm):
        n[0] += 1
        return fn(vmm, n[0])
    return call
