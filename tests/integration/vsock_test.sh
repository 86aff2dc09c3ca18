#!/usr/bin/env bash
# virtio-vsock on real KVM with Firecracker's host-side scheme (its docs/vsock.md):
# `vsock_test.sh CASE`. The guest runs tests/integration/guest/vsock_echo.c (static, stored in a
# copy of the rootfs as /vsock_echo); the host ends are python3 AF_UNIX sockets.
#   echo:   host->guest through "CONNECT 52" (2 MiB each way, checked byte by byte, then 4
#           concurrent connections of 512 KiB), guest-initiated through <uds_path>_5000 (2 MiB
#           each way), a refused port each way (guest: connect fails; host: closed without "OK").
#   bulk:   64 MiB guest->host (<uds_path>_5010) and 64 MiB host->guest (CONNECT 60), each
#           stream's md5 computed on both sides and compared; then 64 concurrent host->guest echo
#           connections (CONNECT 52), each with its own random data, md5-checked both ways.
#   faults: a host peer that stops reading for 20 s while the guest keeps writing 16 MiB: Ember's
#           VmRSS stays within a bound, then every byte arrives (md5); a host process killed
#           mid-stream in each direction: the guest sees the end (EOF or ECONNRESET), a concurrent
#           connection and a new one still work, Ember keeps running.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: vsock_test.sh CASE}
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
UDS=$T/v.sock
: > "$T/host.out"

HOST_PIDS=()
give_up() {
  tail -n 30 "$T/console.out" "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  for p in "${HOST_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  finish
}
# install_guest LINE...: the guest program and a script of LINEs run as the guest's command.
install_guest() {
  gcc -static -O2 -Wall -Wextra -Werror -o "$T/vsock_echo" "$(dirname "$0")/guest/vsock_echo.c" || { fail "cannot build vsock_echo.c"; finish; }
  put_file "$T/vsock_echo" /vsock_echo 0100755
  printf '%s\n' "$@" > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
}
# host_server PORT CODE: python3 CODE (reading sys.argv[1], the socket path) serving
# <uds_path>_PORT in the background; waits until the socket exists.
host_server() {
  python3 -c "$2" "$UDS"_"$1" "$T" >> "$T/host.out" 2>&1 &
  HOST_PIDS+=($!)
  for _ in $(seq 1 150); do [[ -S "$UDS"_"$1" ]] && return 0; sleep 0.2; done
  fail "host server on port $1 did not start"; finish
}
start_ember() {
  cat > "$T/vm.json" <<JSON
{
  "boot-source": {"kernel_image_path": "$K/vmlinux", "boot_args": "$BASE_ARGS -- sh /t.sh"},
  "machine-config": {"vcpu_count": ${1:-1}, "mem_size_mib": 256},
  "drives": [{"drive_id": "rootfs", "path_on_host": "$T/root.ext4", "is_root_device": true, "is_read_only": false}],
  "vsock": {"guest_cid": 3, "uds_path": "$UDS"},
  "metrics": {"metrics_path": "$T/metrics.json"}
}
JSON
  : > "$T/metrics.json"
  "$EMBER_BIN" --no-api --config-file "$T/vm.json" --level Debug < /dev/null > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  echo "$EMBER_PID" > "$T/ember.pid"
  OUT=$T/console.out
}
# The host side's md5 server: each connection is read to EOF and answered with the hex md5 of
# what arrived; prints MD5_SERVER_MS=<ms> for the last stream.
MD5_SERVER='
import hashlib, socket, sys, threading, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[1]); srv.listen(8)
def serve(c):
    h = hashlib.md5(); t0 = time.time()
    while True:
        b = c.recv(1 << 16)
        if not b: break
        h.update(b)
    c.sendall(h.hexdigest().encode() + b"\n"); c.close()
    print("MD5_SERVER_MS=%d" % ((time.time() - t0) * 1000), flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'
# Python helpers for host-initiated connections, prepended to the host-side scripts.
HOST_LIB='
import hashlib, os, socket, sys, threading, time
uds = sys.argv[1]
def connect(port, timeout=600):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(uds); s.settimeout(timeout)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b: return s, None
        line += b
    return s, line
def exchange(s, data):
    """Sends data, half-closes, returns everything read until EOF."""
    err = []
    def tx():
        try: s.sendall(data); s.shutdown(socket.SHUT_WR)
        except OSError as e: err.append(e)
    t = threading.Thread(target=tx); t.start()
    got = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b: break
        got += b
    t.join()
    return bytes(got), err
def echo_check(port, data):
    s, line = connect(port)
    if not line or not line.startswith(b"OK "): return "no OK: %r" % line
    got, err = exchange(s, data)
    s.close()
    if err: return "send: %s" % err[0]
    return "ok" if hashlib.md5(got).digest() == hashlib.md5(data).digest() else "mismatch %d/%d" % (len(got), len(data))
'
case $case_name in
echo)
  install_guest '/vsock_echo listen 52 &' 'sleep 1' 'echo GUEST_READY=1' \
    '/vsock_echo connect 5000 2097152' '/vsock_echo refused 5001' 'echo GUEST_DONE=1' 'sleep 600'
  # The host's echo server for guest-initiated connections to port 5000.
  host_server 5000 '
import socket, sys, threading
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[1]); srv.listen(8)
def serve(c):
    while True:
        b = c.recv(65536)
        if not b: break
        c.sendall(b)
    c.close()
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'
  start_ember
  wait_line GUEST_READY 180 || { fail "guest did not start its listener"; give_up; }
  timeout 300 python3 -c "$HOST_LIB"'
def pat(n, seed):
    return bytes(((i * 2654435761 + seed) >> 13) & 0xff for i in range(n))
r = {}
r["big"] = echo_check(52, pat(2 << 20, 1))
print("H2G_BIG=" + r["big"])
def one(k): r[k] = echo_check(52, pat(512 << 10, k))
threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("H2G_CONCURRENT=" + ",".join(r[k] for k in range(4)))
s, line = connect(53)  # nothing listens there: the guest resets, Ember closes
print("H2G_REFUSED=" + ("closed" if line is None else repr(line)))
' "$UDS" >> "$T/host.out" 2>&1
  wait_line GUEST_DONE 300 || fail "guest did not finish its connections"
  expect_eq "host->guest 2 MiB echo" "$(sed -n 's/^H2G_BIG=//p' "$T/host.out")" ok
  expect_eq "host->guest 4 concurrent echoes" "$(sed -n 's/^H2G_CONCURRENT=//p' "$T/host.out")" ok,ok,ok,ok
  expect_eq "host->guest refused port" "$(sed -n 's/^H2G_REFUSED=//p' "$T/host.out")" closed
  expect_eq "guest->host 2 MiB echo through uds_path_5000" "$(guest_value G2H)" ok
  expect_eq "guest->host refused port" "$(guest_value REFUSED)" ECONNRESET
  ;;
bulk)
  # 64 MiB = 67108864 bytes each way; 64 connections of 512 KiB each way.
  install_guest '/vsock_echo listen 52 &' '/vsock_echo serve 60 md5sum &' 'sleep 1' \
    '/vsock_echo gen 67108864 | md5sum | (read h _; echo G2H_BIG_GUEST=$h)' \
    '/vsock_echo send 5010 67108864 G2H_BIG' 'echo GUEST_READY=1' 'sleep 900'
  host_server 5010 "$MD5_SERVER"
  start_ember
  wait_line GUEST_READY 300 || { fail "guest did not finish sending 64 MiB"; give_up; }
  g2h_guest=$(guest_value G2H_BIG_GUEST)
  [[ $g2h_guest =~ ^[0-9a-f]{32}$ ]] || fail "guest md5 of its 64 MiB: '$g2h_guest'"
  expect_eq "guest->host 64 MiB: md5 the host computed = the guest's" "$(guest_value G2H_BIG)" "$g2h_guest"
  echo "measured: guest->host 64 MiB in $(guest_value G2H_BIG_MS) ms (connect to the host's md5 answer)"
  timeout 240 python3 -c "$HOST_LIB"'
data = os.urandom(64 << 20)
want = hashlib.md5(data).hexdigest()
s, line = connect(60)
t0 = time.time()
if not line or not line.startswith(b"OK "):
    print("H2G_BIG=no OK: %r" % line)
else:
    got, err = exchange(s, data)
    ms = (time.time() - t0) * 1000
    print("H2G_BIG=" + ("ok" if not err and got.decode(errors="replace").split(" ")[0].strip() == want else "guest md5 %r, host md5 %s, %s" % (got[:40], want, err)))
    print("H2G_BIG_MS=%d" % ms, flush=True)
r = {}
def one(k):
    r[k] = echo_check(52, os.urandom(512 << 10))
t0 = time.time()
threads = [threading.Thread(target=one, args=(k,)) for k in range(64)]
for t in threads: t.start()
for t in threads: t.join()
print("MANY_MS=%d" % ((time.time() - t0) * 1000))
bad = {k: v for k, v in r.items() if v != "ok"}
print("MANY=" + ("ok" if len(r) == 64 and not bad else repr(bad)))
' "$UDS" >> "$T/host.out" 2>&1
  expect_eq "host->guest 64 MiB: md5 the guest computed = the host's" "$(sed -n 's/^H2G_BIG=//p' "$T/host.out")" ok
  echo "measured: host->guest 64 MiB in $(sed -n 's/^H2G_BIG_MS=//p' "$T/host.out") ms (send to the guest's md5 answer)"
  expect_eq "64 concurrent connections, 512 KiB each way, md5-checked" "$(sed -n 's/^MANY=//p' "$T/host.out")" ok
  echo "measured: 64 x 512 KiB echoes in $(sed -n 's/^MANY_MS=//p' "$T/host.out") ms"
  kill -0 "$EMBER_PID" 2>/dev/null || fail "Ember is gone"
  ;;
faults)
  # stall: the host reads 1 MiB, then nothing for 20 s while sampling Ember's VmRSS, then the
  # rest. The guest's writes block on credit meanwhile (Ember holds at most CONN_BUF_ALLOC plus
  # the host socket's buffer), so RSS must not grow by more than RSS_BOUND_KB.
  RSS_BOUND_KB=16384
  install_guest '/vsock_echo listen 52 &' '/vsock_echo drain 62 &' 'sleep 1' \
    '/vsock_echo gen 16777216 | md5sum | (read h _; echo STALL_GUEST=$h)' \
    '/vsock_echo send 5011 16777216 STALL' 'echo GUEST_READY=1' \
    '/vsock_echo send 5012 67108864 KILLED' 'echo GUEST_DONE=1' 'sleep 600'
  host_server 5011 '
import hashlib, socket, sys, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[1]); srv.listen(1)
c, _ = srv.accept()
pid = open(sys.argv[2] + "/ember.pid").read().strip()
def rss_kb():
    for l in open("/proc/%s/status" % pid):
        if l.startswith("VmRSS:"): return int(l.split()[1])
h = hashlib.md5(); n = 0
while n < (1 << 20):
    b = c.recv(min(1 << 16, (1 << 20) - n))
    if not b: break
    h.update(b); n += len(b)
time.sleep(1)
base = rss_kb(); peak = base
for _ in range(40):
    time.sleep(0.5); peak = max(peak, rss_kb())
print("STALL_RSS_BASE_KB=%d" % base); print("STALL_RSS_PEAK_KB=%d" % peak, flush=True)
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print("STALL_BYTES=%d" % n, flush=True)
c.sendall(h.hexdigest().encode() + b"\n"); c.close()
'
  # killed, guest->host: this host process reads 1 MiB and is killed (SIGKILL) mid-stream.
  host_server 5012 '
import os, signal, socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(sys.argv[1]); srv.listen(1)
c, _ = srv.accept()
n = 0
while n < (1 << 20):
    b = c.recv(1 << 16)
    if not b: break
    n += len(b)
os.kill(os.getpid(), signal.SIGKILL)
'
  start_ember
  wait_line GUEST_READY 600 || { fail "guest did not finish the stalled stream"; give_up; }
  expect_eq "stalled peer: md5 of the 16 MiB the host read = the guest's" "$(guest_value STALL)" "$(guest_value STALL_GUEST)"
  base=$(sed -n 's/^STALL_RSS_BASE_KB=//p' "$T/host.out"); peak=$(sed -n 's/^STALL_RSS_PEAK_KB=//p' "$T/host.out")
  if [[ -n $base && -n $peak && $((peak - base)) -le $RSS_BOUND_KB ]]; then
    pass "stalled peer: Ember's VmRSS grew by $((peak - base)) KiB in 20 s (bound $RSS_BOUND_KB KiB; $base -> $peak KiB)"
  else
    fail "stalled peer: Ember's VmRSS $base -> $peak KiB (bound +$RSS_BOUND_KB KiB)"
  fi
  # killed, host->guest: a host process streaming to the guest's drain server is killed; a
  # concurrent echo connection goes on, and a new connection works afterwards.
  timeout 300 python3 -c "$HOST_LIB"'
import signal, subprocess
r = {}
def survivor(): r["survivor"] = echo_check(52, os.urandom(4 << 20))
t = threading.Thread(target=survivor); t.start()
victim = subprocess.Popen([sys.executable, "-c", """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1]); s.sendall(b"CONNECT 62\\n")
line = b""
while not line.endswith(b"\\n"): line += s.recv(1)
chunk = bytes(65536); n = 0
while True:
    s.sendall(chunk); n += len(chunk)
    if n == 1 << 20: print("SENT_1MIB", flush=True)
""", uds], stdout=subprocess.PIPE)
print("VICTIM=" + victim.stdout.readline().decode().strip(), flush=True)
time.sleep(0.5)
victim.send_signal(signal.SIGKILL); victim.wait()
t.join()
print("SURVIVOR=" + r["survivor"])
print("AFTER_KILL=" + echo_check(52, os.urandom(256 << 10)))
' "$UDS" >> "$T/host.out" 2>&1
  wait_line GUEST_DONE 300 || fail "guest did not finish"
  expect_eq "killed host->guest peer: it had streamed" "$(sed -n 's/^VICTIM=//p' "$T/host.out")" SENT_1MIB
  drain=$(guest_value DRAIN_END)
  [[ $drain =~ ^([0-9]+):(eof|ECONNRESET)$ && ${BASH_REMATCH[1]} -ge 1048576 ]] \
    && pass "killed host->guest peer: the guest saw the end after ${BASH_REMATCH[1]} bytes (${BASH_REMATCH[2]})" \
    || fail "killed host->guest peer: guest DRAIN_END='$drain'"
  expect_eq "a concurrent 4 MiB echo survives the kill" "$(sed -n 's/^SURVIVOR=//p' "$T/host.out")" ok
  expect_eq "a new connection after the kill" "$(sed -n 's/^AFTER_KILL=//p' "$T/host.out")" ok
  killed=$(guest_value KILLED)
  [[ $killed =~ ^error:(ECONNRESET|EPIPE)$ ]] && pass "killed guest->host peer: the guest's write failed ($killed after $(guest_value KILLED_SENT) bytes)" \
    || fail "killed guest->host peer: guest KILLED='$killed'"
  kill -0 "$EMBER_PID" 2>/dev/null && pass "Ember keeps running" || fail "Ember is gone"
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
for p in "${HOST_PIDS[@]}"; do kill "$p" 2>/dev/null; done
kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
if [[ $FAILS -gt 0 ]]; then
  echo "--- host:" >&2; cat "$T/host.out" >&2
  echo "--- console (tail):" >&2; tail -n 40 "$T/console.out" >&2
  echo "--- ember log (tail):" >&2; tail -n 20 "$T/ember.err" >&2
fi
finish
