#!/usr/bin/env bash
# virtio-vsock on real KVM with Firecracker's host-side scheme (its docs/vsock.md):
# `vsock_test.sh CASE`. The guest runs tests/integration/guest/vsock_echo.c (static, stored in a
# copy of the rootfs as /vsock_echo); the host ends are python3 AF_UNIX sockets.
#   echo: host->guest through "CONNECT 52" (2 MiB each way, checked byte by byte, then 4
#         concurrent connections of 512 KiB), guest->host through <uds_path>_5000 (2 MiB each way),
#         a refused port each way (guest: connect fails; host: closed without "OK").
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: vsock_test.sh CASE}
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
UDS=$T/v.sock

put_file() { # SRC DEST MODE
  debugfs -w -R "write $1 $2" "$T/root.ext4" >/dev/null 2>&1 && debugfs -w -R "sif $2 mode $3" "$T/root.ext4" >/dev/null 2>&1 \
    || { fail "debugfs write $2"; finish; }
}
wait_line() { # KEY TIMEOUT_S
  for _ in $(seq 1 $(($2 * 5))); do
    [[ -n $(guest_value "$1") ]] && return 0
    kill -0 "$EMBER_PID" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
give_up() {
  tail -n 30 "$T/console.out" "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  [[ -n ${ECHO_PID:-} ]] && kill "$ECHO_PID" 2>/dev/null
  finish
}

case $case_name in
echo)
  gcc -static -O2 -Wall -Wextra -Werror -o "$T/vsock_echo" "$(dirname "$0")/guest/vsock_echo.c" || { fail "cannot build vsock_echo.c"; finish; }
  put_file "$T/vsock_echo" /vsock_echo 0100755
  printf '%s\n' '/vsock_echo listen 52 &' 'sleep 1' 'echo GUEST_READY=1' \
    '/vsock_echo connect 5000 2097152' '/vsock_echo refused 5001' 'echo GUEST_DONE=1' 'sleep 600' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  # The host's echo server for guest-initiated connections to port 5000.
  python3 - "$UDS"_5000 <<'PY' &
import os, socket, sys, threading
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
PY
  ECHO_PID=$!
  for _ in $(seq 1 150); do [[ -S "$UDS"_5000 ]] && break; sleep 0.2; done
  [[ -S "$UDS"_5000 ]] || { fail "host echo server did not start"; finish; }
  cat > "$T/vm.json" <<JSON
{
  "boot-source": {"kernel_image_path": "$K/vmlinux", "boot_args": "$BASE_ARGS -- sh /t.sh"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
  "drives": [{"drive_id": "rootfs", "path_on_host": "$T/root.ext4", "is_root_device": true, "is_read_only": false}],
  "vsock": {"guest_cid": 3, "uds_path": "$UDS"},
  "metrics": {"metrics_path": "$T/metrics.json"}
}
JSON
  : > "$T/metrics.json"
  "$EMBER_BIN" --no-api --config-file "$T/vm.json" --level Debug < /dev/null > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  OUT=$T/console.out
  wait_line GUEST_READY 180 || { fail "guest did not start its listener"; give_up; }
  timeout 300 python3 - "$UDS" <<'PY' > "$T/host.out" 2>&1
import socket, sys, threading
uds = sys.argv[1]
def pat(n, seed):
    return bytes(((i * 2654435761 + seed) >> 13) & 0xff for i in range(n))
def connect(port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(uds); s.settimeout(120)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b: return s, None
        line += b
    return s, line
def echo_once(n, seed, results, k):
    s, line = connect(52)
    if not line or not line.startswith(b"OK "):
        results[k] = "no OK: %r" % line; return
    data = pat(n, seed)
    t = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
    t.start()
    got = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b: break
        got += b
    t.join()
    results[k] = "ok" if bytes(got) == data else "mismatch %d/%d" % (len(got), n)
r = {}
echo_once(2 << 20, 1, r, "big")
print("H2G_BIG=" + r["big"])
threads = [threading.Thread(target=echo_once, args=(512 << 10, k, r, k)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("H2G_CONCURRENT=" + ",".join(r[k] for k in range(4)))
s, line = connect(53)  # nothing listens there: the guest resets, Ember closes
print("H2G_REFUSED=" + ("closed" if line is None else repr(line)))
PY
  wait_line GUEST_DONE 300 || fail "guest did not finish its connections"
  expect_eq "host->guest 2 MiB echo" "$(sed -n 's/^H2G_BIG=//p' "$T/host.out")" ok
  expect_eq "host->guest 4 concurrent echoes" "$(sed -n 's/^H2G_CONCURRENT=//p' "$T/host.out")" ok,ok,ok,ok
  expect_eq "host->guest refused port" "$(sed -n 's/^H2G_REFUSED=//p' "$T/host.out")" closed
  expect_eq "guest->host 2 MiB echo through uds_path_5000" "$(guest_value G2H)" ok
  expect_eq "guest->host refused port" "$(guest_value REFUSED)" ECONNRESET
  kill "$ECHO_PID" 2>/dev/null; wait "$ECHO_PID" 2>/dev/null
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
if [[ $FAILS -gt 0 ]]; then
  echo "--- host:" >&2; cat "$T/host.out" >&2
  echo "--- console (tail):" >&2; tail -n 40 "$T/console.out" >&2
  echo "--- ember log (tail):" >&2; tail -n 20 "$T/ember.err" >&2
fi
finish
