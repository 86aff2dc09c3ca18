# The `devices` case of snapshot_test.sh (sourced by it, inside a network namespace of its own):
# one guest with a TAP network interface, vsock, entropy and a balloon with statistics is
# snapshotted (Full) while a host->guest vsock connection is open; its Ember is killed, the TAP
# deleted and a fresh Ember loads the snapshot onto another TAP (network_overrides). Then:
#   net: the guest pings the host and the host the guest over the new TAP, and 4 MiB go each
#        way over TCP with matching md5s;
#   vsock: the connection open at snapshot time ends in the guest (the device's
#        TRANSPORT_RESET), and a new one echoes 1 MiB intact;
#   entropy: the guest reads 4 KiB from /dev/hwrng, counted by the new Ember's metrics;
#   balloon: GET /balloon shows the configuration as before, the statistics endpoint answers
#        with the driver's `actual`, a PATCH inflates the balloon (actual grows) and the
#        guest's free memory, as its statistics report it, drops (the stats timer runs again).
# shellcheck shell=bash

devices_case() {
  local uds=$T/v.sock mib=4
  ip link set lo up
  ip tuntap add dev tap0 mode tap && ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up || { fail "tap0"; finish; }
  SECONDS=0
  # The host's end of every connection is one python3 process, started before the boot (its
  # start-up takes seconds under TCG), stepping on files: go1 holds a vsock connection to the
  # guest's port 62 (the guest drains it) across the snapshot; go2 (after the restore) echoes
  # 1 MiB on a new connection to port 52, then sends MIB MiB to the guest's TCP port 5001 and
  # takes MIB MiB on its own port 5002, printing the md5s.
  python3 - "$uds" "$T" "$mib" > "$T/helper.out" 2>&1 <<'PY' &
import hashlib, os, socket, sys, threading, time
uds, tdir, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
def say(k, v): print("%s=%s" % (k, v), flush=True)
def wait_file(name):  # the test gave up if it takes longer
    deadline = time.time() + 600
    while not os.path.exists(os.path.join(tdir, name)):
        if time.time() > deadline: sys.exit("no " + name)
        time.sleep(0.05)
def vsock(port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(uds); s.settimeout(60)
    s.sendall(b"CONNECT %d\n" % port)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b: break
        line += b
    return s, line.decode(errors="replace").strip()
print("WAITING", flush=True)
wait_file("go1")
held, line = vsock(62)
held.sendall(b"x" * 1000)
say("HELD", line)
wait_file("go2")
s, line = vsock(52)
if not line.startswith("OK "):
    say("ECHO", "no OK: %r" % line)
else:
    data = os.urandom(1 << 20)
    threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True).start()
    got = bytearray()
    while True:
        b = s.recv(1 << 16)
        if not b: break
        got += b
    say("ECHO", "ok" if got == data else "mismatch %d/%d" % (len(got), len(data)))
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("172.16.0.1", 5002)); srv.listen(1); srv.settimeout(120)
out = os.urandom(mib << 20)
for _ in range(600):  # until the guest's nc listens
    try:
        c = socket.create_connection(("172.16.0.2", 5001), timeout=5); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("cannot connect to the guest's port 5001")
c.settimeout(120); c.sendall(out); c.close()
say("SENT_MD5", hashlib.md5(out).hexdigest())
say("LISTENING", 1)
c, _ = srv.accept(); c.settimeout(120)
h = hashlib.md5()
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b)
say("RX_HOST_MD5", h.hexdigest())
PY
  local helper_pid=$!
  # The guest program, built once per build tree (gcc under TCG takes most of a boot's time);
  # rebuilt when its source is newer, renamed into place so concurrent cases see a whole file.
  local src bin
  src=$(dirname "$0")/guest/vsock_echo.c bin=$(dirname "$EMBER_BIN")/guest-bin/vsock_echo
  if [[ ! -x $bin || $src -nt $bin ]]; then
    mkdir -p "$(dirname "$bin")" && gcc -static -O2 -Wall -Wextra -Werror -o "$bin.$$" "$src" && mv -f "$bin.$$" "$bin" \
      || { fail "cannot build vsock_echo.c"; finish; }
  fi
  put_file "$bin" /vsock_echo 0100755
  # The guest runs what arrives on its console, one line at a time.
  printf '%s\n' 'ip addr add 172.16.0.2/24 dev eth0' 'ip link set eth0 up' \
    '/vsock_echo listen 52 &' '/vsock_echo drain 62 &' 'echo READY=1' \
    'while true; do if read -t 1 c; then eval "$c"; fi; done' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  mkfifo "$T/a.in" "$T/b.in"
  exec 3<> "$T/a.in"
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out EMBER_STDIN=$T/a.in start_ember
  expect_status "machine-config" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}'
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  expect_status "rootfs" 204 PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  expect_status "eth0" 204 PUT /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}'
  expect_status "vsock" 204 PUT /vsock "{\"guest_cid\": 3, \"uds_path\": \"$uds\"}"
  expect_status "entropy" 204 PUT /entropy '{}'
  expect_status "balloon" 204 PUT /balloon '{"amount_mib": 16, "deflate_on_oom": false, "stats_polling_interval_s": 1}'
  echo "phase: configure at ${SECONDS}s"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_for READY 300
  echo "phase: guest ready at ${SECONDS}s"

  # The balloon's driver took the target (its `actual` reached it) and reports statistics.
  local st=""
  for _ in $(seq 1 300); do
    st=$(api GET /balloon/statistics)
    [[ $st == *'"actual_mib":16'* && $st == *'"free_memory"'* ]] && break
    sleep 0.2
  done
  [[ $st == *'"actual_mib":16'* && $st == *'"free_memory"'* ]] && pass "balloon inflated to 16 MiB before the snapshot" \
    || { fail "balloon before the snapshot: $st"; give_up; }
  expect_status "GET /balloon before" 200 GET /balloon
  local balloon_before=${LAST% *}

  echo "phase: balloon checked at ${SECONDS}s"
  # The helper holds a vsock connection across the snapshot.
  local held_line
  for _ in $(seq 1 300); do grep -q '^WAITING' "$T/helper.out" && break; sleep 0.1; done
  : > "$T/go1"
  for _ in $(seq 1 300); do held_line=$(grep '^HELD=' "$T/helper.out") && break; sleep 0.1; done
  [[ $held_line == 'HELD=OK '* ]] && pass "a vsock connection is open ($held_line)" || { fail "held connection: $(cat "$T/helper.out")"; give_up; }
  # The guest has the connection (a console round trip later it is still open).
  echo 'echo SYNC1=1' >&3
  wait_for SYNC1 60
  [[ -z $(guest_value DRAIN_END) ]] && pass "the held connection is open in the guest" || fail "drain ended before the snapshot: $(guest_value DRAIN_END)"

  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "Full snapshot with every device" 204 PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 3>&-

  echo "phase: snapshot done at ${SECONDS}s"
  # Another TAP with the host's address and MAC (the guest's neighbour entry for 172.16.0.1 names
  # tap0's MAC: a TAP with another MAC drops the guest's frames until that entry goes stale, as
  # it would for a Firecracker clone); tap0 is gone, so only the override can carry traffic.
  local host_mac; host_mac=$(ip -br link show tap0 | awk '{print $3}')  # not /sys: it shows the first netns
  ip link del tap0
  ip tuntap add dev tapb mode tap && ip link set tapb address "$host_mac" && ip addr add 172.16.0.1/24 dev tapb \
    && ip link set tapb up || { fail "tapb"; finish; }
  rm -f "$uds" # the killed Ember's listener
  exec 4<> "$T/b.in"
  SOCK=$T/b.sock
  EMBER_CONSOLE=$T/b.out EMBER_STDIN=$T/b.in start_ember
  expect_status "metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  local t0; t0=$(date +%s%N)
  expect_status "load onto another TAP" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}, \"network_overrides\": [{\"iface_id\": \"eth0\", \"host_dev_name\": \"tapb\"}]}"
  [[ ${LAST##* } == 204 ]] || give_up
  echo "snapshot load took $(( ($(date +%s%N) - t0) / 1000000 )) ms (under TCG)"
  ip link show tap0 > /dev/null 2>&1 && fail "tap0 exists again: the override was not used" || pass "the load did not open tap0"
  expect_status "GET /balloon after load" 200 GET /balloon
  expect_eq "balloon configuration after the load" "${LAST% *}" "$balloon_before"
  expect_status "resume" 204 PATCH /vm '{"state": "Resumed"}'
  OUT=$T/b.out
  echo "phase: resumed at ${SECONDS}s"

  # vsock: the held connection ended in the guest (TRANSPORT_RESET), a new one echoes.
  wait_line DRAIN_END 60 && pass "the connection open at snapshot time ended in the guest: $(guest_value DRAIN_END)" \
    || fail "the guest's held vsock connection never ended"
  : > "$T/go2"
  helper_value() { # KEY TIMEOUT_S: KEY=VALUE from the helper
    local v
    for _ in $(seq 1 $(($2 * 10))); do
      v=$(sed -n "s/^$1=//p" "$T/helper.out" | tail -n 1)
      [[ -n $v ]] && { echo "$v"; return 0; }
      kill -0 "$helper_pid" 2>/dev/null || break
      sleep 0.1
    done
    return 1
  }
  expect_eq "a new vsock connection echoes 1 MiB" "$(helper_value ECHO 60)" ok
  echo "phase: vsock done at ${SECONDS}s"

  # net: ping both ways, then MIB MiB each way over TCP.
  echo 'ping -c 1 -W 5 172.16.0.1 >/dev/null && echo PING_HOST=ok || echo PING_HOST=fail' >&4
  wait_for PING_HOST 60
  expect_eq "the guest pings the host over tapb" "$(guest_value PING_HOST)" ok
  busybox ping -c 1 -W 5 172.16.0.2 > /dev/null && pass "the host pings the guest over tapb" || fail "the host cannot ping the guest"
  echo "phase: pinged at ${SECONDS}s"
  echo 'echo RX_MD5=$(nc -l -p 5001 </dev/null | md5sum | cut -c1-32)' >&4
  wait_for RX_MD5 90
  expect_eq "host -> guest $mib MiB intact" "$(guest_value RX_MD5)" "$(helper_value SENT_MD5 5)"
  echo "phase: host -> guest done at ${SECONDS}s"
  [[ $(helper_value LISTENING 30) == 1 ]] || fail "the host's TCP receiver is not listening: $(cat "$T/helper.out")"
  echo "dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=$mib 2>/dev/null; echo TX_MD5=\$(md5sum /tmp/tx.bin | cut -c1-32); nc 172.16.0.1 5002 < /tmp/tx.bin; echo TX_DONE=1" >&4
  wait_for TX_DONE 90
  local got; got=$(helper_value RX_HOST_MD5 30)
  if [[ -n $got ]]; then expect_eq "guest -> host $mib MiB intact" "$got" "$(guest_value TX_MD5)"; else fail "guest -> host: nothing received: $(cat "$T/helper.out")"; fi
  echo "phase: net done at ${SECONDS}s"

  # entropy: 4 KiB from /dev/hwrng, counted by this Ember.
  echo 'echo HWRNG=$(head -c 4096 /dev/hwrng | wc -c)' >&4
  wait_for HWRNG 60
  expect_eq "bytes read from /dev/hwrng after the restore" "$(guest_value HWRNG)" 4096
  expect_status "FlushMetrics" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  local rng_bytes
  rng_bytes=$(grep -o '"entropy":{[^}]*}' "$T/metrics.json" | sed -n 's/.*"entropy_bytes":\([0-9]*\).*/\1/p' | awk '{s += $1} END {print s + 0}')
  [[ $rng_bytes -ge 4096 ]] && pass "entropy_bytes after the restore: $rng_bytes" || fail "entropy_bytes after the restore: $rng_bytes"
  echo "phase: entropy done at ${SECONDS}s"
  # balloon: statistics answer; a new target inflates it; the guest's reported free memory drops.
  expect_status "balloon statistics after the restore" 200 GET /balloon/statistics
  [[ $LAST == *'"actual_mib":16'* ]] && pass "the driver's actual is 16 MiB after the restore" || fail "statistics after the restore: $LAST"
  local free0; free0=$(sed -n 's/.*"free_memory":\([0-9]*\).*/\1/p' <<< "$LAST")
  expect_status "PATCH /balloon after the restore" 204 PATCH /balloon '{"amount_mib": 64}'
  local free1=""
  for _ in $(seq 1 300); do
    st=$(api GET /balloon/statistics)
    free1=$(sed -n 's/.*"free_memory":\([0-9]*\).*/\1/p' <<< "$st")
    [[ $st == *'"actual_mib":64'* && -n $free0 && -n $free1 && $free1 -lt $((free0 - (32 << 20))) ]] && break
    sleep 0.2
  done
  [[ $st == *'"actual_mib":64'* ]] && pass "the balloon inflated to 64 MiB after the restore" || fail "balloon after PATCH: $st"
  [[ -n $free0 && -n $free1 && $free1 -lt $((free0 - (32 << 20))) ]] \
    && pass "the guest's statistics follow: free memory $((free0 >> 20)) -> $((free1 >> 20)) MiB" \
    || fail "guest free memory did not drop: '$free0' -> '$free1'"
  echo "phase: balloon done at ${SECONDS}s"
  kill "$helper_pid" 2>/dev/null; wait "$helper_pid" 2>/dev/null
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 4>&-
}
