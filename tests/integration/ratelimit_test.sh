#!/usr/bin/env bash
# Rate limiters on real KVM, configured and changed through the API as Firecracker's clients do:
# `ratelimit_test.sh CASE`. Timing under nested TCG is noisy, so every check is a lower bound on
# a throttled transfer or a ratio between a throttled and an unthrottled one, never a tight time.
#   block   a drive limited to 1 MiB/s (size 1048576, refill_time 1000): a 4 MiB O_DIRECT read
#           takes about 3 s (the full bucket, then 3 MiB at 1 MiB/s); PATCH /drives lifts the
#           limit and the next 4 MiB read is at least twice as fast.
#   net     the same for network tx and rx (1 MiB/s each way, 4 MiB over TCP), lifted by
#           PATCH /network-interfaces.
#   serial  a serial rate_limiter drops what the guest prints beyond it, and counts the bytes.
if [[ ${1:-} == net && -z ${EMBER_IN_NETNS:-} ]]; then
  exec env EMBER_IN_NETNS=1 unshare --net bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: ratelimit_test.sh CASE}
SOCK=$T/api.sock
[[ -f $EMBER_ROOTFS_DIR/rootfs.ext4 ]] || { echo "FAIL: EMBER_ROOTFS_DIR has no rootfs.ext4" >&2; exit 1; }
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
MIB=1048576
LIMIT="{\"bandwidth\": {\"size\": $MIB, \"refill_time\": 1000}}"
LIFT='{"bandwidth": {"size": 0, "refill_time": 0}}'

give_up() {
  tail -n 30 "$T/console.out" "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  finish
}
put_script() {
  printf '%s\n' "$1" > "$T/t.sh"
  debugfs -w -R "write $T/t.sh /t.sh" "$T/root.ext4" >/dev/null 2>&1 || { fail "debugfs write /t.sh"; finish; }
}
# metric GROUP KEY: the sum of a counter over every metrics line so far (each line holds the
# increments since the previous one).
metric() {
  python3 -c '
import json, sys
t = 0
for l in open(sys.argv[1]):
    if l.strip(): t += json.loads(l).get(sys.argv[2], {}).get(sys.argv[3], 0)
print(t)' "$T/metrics.json" "$1" "$2"
}
# at_least NAME VALUE MIN / below NAME VALUE MAX: integer comparisons that fail on a non-number.
at_least() { [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3)) && pass "$1 ($2 >= $3)" || fail "$1: '$2' is not >= $3"; }
below() { [[ $2 =~ ^[0-9]+$ ]] && (($2 < $3)) && pass "$1 ($2 < $3)" || fail "$1: '$2' is not < $3"; }
# The guest's milliseconds since boot (/proc/uptime has two decimals and is above 1 s by then).
GUEST_MS='ms() { u=$(cut -d" " -f1 /proc/uptime); echo $((${u%.*}${u#*.}0)); }'
boot_source() { # CMD
  expect_status "PUT /boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- $1\"}"
  expect_status "PUT /machine-config" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}'
  expect_status "PUT /drives/rootfs" 204 PUT /drives/rootfs \
    "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
}

case $case_name in
block)
  # vdb: 8 MiB limited to 1 MiB/s; vdc: a flag the host sets once it has lifted the limit (read
  # with O_DIRECT, so the guest sees the host's write). Each timed read is 4 MiB, O_DIRECT, of
  # a different half of vdb.
  head -c $((8 * MIB)) /dev/urandom > "$T/lim.img"
  head -c 4096 /dev/zero > "$T/flag.img"
  put_script "$GUEST_MS
rd() { s=\$(ms); dd if=/dev/vdb of=/dev/null bs=4M count=1 skip=\$1 iflag=direct 2>/dev/null || echo fail; e=\$(ms); echo \$((e - s)); }
echo R1_MS=\$(rd 0)
i=0
while [ \$i -lt 1500 ]; do
  [ \"\$(dd if=/dev/vdc bs=4096 count=1 iflag=direct 2>/dev/null | head -c 2)\" = GO ] && break
  i=\$((i + 1)); sleep 0.2
done
echo R2_MS=\$(rd 1)
echo MD5=\$(dd if=/dev/vdb bs=4M iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
  start_ember
  expect_status "PUT /metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  boot_source "sh /t.sh"
  expect_status "PUT /drives bad rate_limiter" 400 PUT /drives/lim \
    "{\"drive_id\": \"lim\", \"path_on_host\": \"$T/lim.img\", \"is_root_device\": false, \"rate_limiter\": {\"bandwidth\": {\"size\": $MIB}}}"
  [[ $LAST == *refill_time* ]] && pass "bad rate_limiter explained" || fail "bad rate_limiter: $LAST"
  expect_status "PUT /drives/lim (1 MiB/s)" 204 PUT /drives/lim \
    "{\"drive_id\": \"lim\", \"path_on_host\": \"$T/lim.img\", \"is_root_device\": false, \"rate_limiter\": $LIMIT}"
  expect_status "PUT /drives/flag" 204 PUT /drives/flag \
    "{\"drive_id\": \"flag\", \"path_on_host\": \"$T/flag.img\", \"is_root_device\": false}"
  expect_status "PATCH /drives before start" 400 PATCH /drives/lim "{\"drive_id\": \"lim\", \"rate_limiter\": $LIFT}"
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *"\"rate_limiter\":{\"bandwidth\":{\"one_time_burst\":null,\"refill_time\":1000,\"size\":$MIB},\"ops\":null}"* ]] \
    && pass "vm/config shows the drive's limiter" || fail "vm/config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_line R1_MS 300 || { fail "no throttled read from the guest"; give_up; }
  r1=$(guest_value R1_MS)
  # 1 MiB from the full bucket, then 3 MiB at 1 MiB/s: about 3 s.
  at_least "4 MiB read at 1 MiB/s takes about 3 s (ms)" "$r1" 2400
  expect_status "FlushMetrics" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  at_least "block_lim rate_limiter_throttled_events" "$(metric block_lim rate_limiter_throttled_events)" 1
  at_least "block_lim rate_limiter_event_count" "$(metric block_lim rate_limiter_event_count)" 1
  expect_eq "the flag drive was never throttled" "$(metric block_flag rate_limiter_throttled_events)" 0
  expect_status "PATCH bad bucket" 400 PATCH /drives/lim '{"drive_id": "lim", "rate_limiter": {"bandwidth": {"size": -1, "refill_time": 0}}}'
  expect_status "PATCH unknown field" 400 PATCH /drives/lim '{"drive_id": "lim", "rate_limiter": {"bytes": null}}'
  expect_status "PATCH unknown drive" 400 PATCH /drives/nosuch "{\"drive_id\": \"nosuch\", \"rate_limiter\": $LIFT}"
  expect_status "GET /vm/config after refused PATCHes" 200 GET /vm/config
  [[ $LAST == *"\"size\":$MIB"* ]] && pass "limiter unchanged by refused PATCHes" || fail "vm/config: $LAST"
  expect_status "PATCH lifting the limit" 204 PATCH /drives/lim "{\"drive_id\": \"lim\", \"rate_limiter\": $LIFT}"
  expect_status "GET /vm/config after PATCH" 200 GET /vm/config
  python3 -c 'import json,sys; d=[x for x in json.loads(sys.argv[1].rsplit(" ",1)[0])["drives"] if x["drive_id"]=="lim"][0]; sys.exit(d["rate_limiter"] is not None)' "$LAST" \
    && pass "vm/config: lim has no rate_limiter" || fail "vm/config after lift: $LAST"
  printf GO | dd of="$T/flag.img" conv=notrunc status=none
  wait_line R2_MS 120 || { fail "no second read from the guest"; give_up; }
  r2=$(guest_value R2_MS)
  below "unthrottled 4 MiB read is at least twice as fast (ms, throttled took $r1)" "$r2" $(((r1 + 1) / 2))
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  expect_eq "guest read the drive intact" "$(guest_value MD5)" "$(md5sum < "$T/lim.img" | cut -c1-32)"
  ;;
net)
  ip link set lo up
  ip tuntap add dev tap0 mode tap && ip addr add 172.16.0.1/24 dev tap0 && ip link set tap0 up || { fail "tap0"; finish; }
  head -c $((4 * MIB)) /dev/urandom > "$T/host.bin"
  # Guest: tx1 (4 MiB to the host's 5002), rx1 (4 MiB from 5003), wait for the host's go on
  # 5004, then tx2 (5005) and rx2 (5006). Each rx is timed in the guest (connect to close);
  # each tx on the host (first byte to close). Connections are retried until the host listens.
  put_script "$GUEST_MS
ip addr add 172.16.0.2/24 dev eth0
ip link set eth0 up
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=4 2>/dev/null
echo TX_MD5=\$(md5sum /tmp/tx.bin | cut -c1-32)
send() { i=0; until nc 172.16.0.1 \$1 < /tmp/tx.bin; do i=\$((i + 1)); [ \$i -gt 300 ] && return; sleep 0.5; done; }
recv() { i=0; until s=\$(ms); nc 172.16.0.1 \$1 </dev/null > /tmp/rx.bin; do i=\$((i + 1)); [ \$i -gt 300 ] && return; sleep 0.5; done; e=\$(ms); echo \$((e - s)) \$(wc -c < /tmp/rx.bin) \$(md5sum < /tmp/rx.bin | cut -c1-32); }
send 5002
echo RX1=\$(recv 5003)
i=0; until nc 172.16.0.1 5004 </dev/null >/dev/null; do i=\$((i + 1)); [ \$i -gt 600 ] && break; sleep 0.2; done
send 5005
echo RX2=\$(recv 5006)"
  # host_recv PORT: prints "BYTES MS MD5" for one connection, MS from its first byte to its close.
  host_recv() {
    python3 - "$1" <<'PY'
import hashlib, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); srv.settimeout(300)
c, _ = srv.accept(); c.settimeout(120)
h, n, first = hashlib.md5(), 0, None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if first is None: first = time.monotonic()
    n += len(b); h.update(b)
print(n, int((time.monotonic() - (first or time.monotonic())) * 1000), h.hexdigest())
PY
  }
  # host_send PORT FILE: serves FILE to one connection, then closes it.
  host_send() {
    python3 - "$1" "$2" <<'PY'
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); srv.settimeout(300)
c, _ = srv.accept(); c.settimeout(None)
with open(sys.argv[2], "rb") as f: c.sendfile(f)
c.close()
PY
  }
  start_ember
  expect_status "PUT /metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  boot_source "sh /t.sh"
  expect_status "PUT /network-interfaces/eth0 (1 MiB/s each way)" 204 PUT /network-interfaces/eth0 \
    "{\"iface_id\": \"eth0\", \"host_dev_name\": \"tap0\", \"rx_rate_limiter\": $LIMIT, \"tx_rate_limiter\": $LIMIT}"
  expect_status "PATCH /network-interfaces before start" 400 PATCH /network-interfaces/eth0 "{\"iface_id\": \"eth0\", \"tx_rate_limiter\": $LIFT}"
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *"\"rx_rate_limiter\":{\"bandwidth\":{\"one_time_burst\":null,\"refill_time\":1000,\"size\":$MIB},\"ops\":null}"* && $LAST == *'"tx_rate_limiter":{"bandwidth"'* ]] \
    && pass "vm/config shows both limiters" || fail "vm/config: $LAST"
  timeout 400 bash -c "$(declare -f host_recv); host_recv 5002" > "$T/tx1" &
  tx1_pid=$!
  timeout 400 bash -c "$(declare -f host_send); host_send 5003 '$T/host.bin'" &
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait "$tx1_pid"
  read -r tx1_bytes tx1_ms tx1_md5 < "$T/tx1"
  # No connection within the listener's 300 s: show where the guest got to now, rather than
  # waiting out RX1 as well and being killed by ctest's timeout with nothing printed.
  [[ -n ${tx1_bytes:-} ]] || { fail "tx1: the guest never sent to the host's port 5002"; give_up; }
  wait_line RX1 300 || { fail "no rx1 from the guest"; give_up; }
  read -r rx1_ms rx1_bytes rx1_md5 <<< "$(guest_value RX1)"
  expect_eq "tx1: 4 MiB arrived" "${tx1_bytes:-}" $((4 * MIB))
  expect_eq "tx1: intact" "${tx1_md5:-}" "$(guest_value TX_MD5)"
  expect_eq "rx1: 4 MiB arrived" "${rx1_bytes:-}" $((4 * MIB))
  expect_eq "rx1: intact" "${rx1_md5:-}" "$(md5sum < "$T/host.bin" | cut -c1-32)"
  at_least "tx at 1 MiB/s: 4 MiB take about 3 s (ms)" "${tx1_ms:-}" 2400
  at_least "rx at 1 MiB/s: 4 MiB take about 3 s (ms)" "${rx1_ms:-}" 2400
  expect_status "FlushMetrics" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  at_least "net_eth0 tx_rate_limiter_throttled" "$(metric net_eth0 tx_rate_limiter_throttled)" 1
  at_least "net_eth0 rx_rate_limiter_throttled" "$(metric net_eth0 rx_rate_limiter_throttled)" 1
  expect_status "PATCH bad body" 400 PATCH /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tap1"}'
  expect_status "PATCH unknown interface" 400 PATCH /network-interfaces/eth9 "{\"iface_id\": \"eth9\", \"rx_rate_limiter\": $LIFT}"
  expect_status "PATCH lifting both limits" 204 PATCH /network-interfaces/eth0 \
    "{\"iface_id\": \"eth0\", \"rx_rate_limiter\": $LIFT, \"tx_rate_limiter\": $LIFT}"
  expect_status "GET /vm/config after PATCH" 200 GET /vm/config
  [[ $LAST == *'"rx_rate_limiter":null'* && $LAST == *'"tx_rate_limiter":null'* ]] && pass "vm/config: limits lifted" || fail "vm/config: $LAST"
  timeout 400 bash -c "$(declare -f host_recv); host_recv 5005" > "$T/tx2" &
  tx2_pid=$!
  timeout 400 bash -c "$(declare -f host_send); host_send 5006 '$T/host.bin'" &
  timeout 300 python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5004)); s.listen(1); s.settimeout(280); s.accept()[0].close()'
  wait "$tx2_pid"
  read -r tx2_bytes tx2_ms tx2_md5 < "$T/tx2"
  wait_line RX2 300 || { fail "no rx2 from the guest"; give_up; }
  read -r rx2_ms rx2_bytes rx2_md5 <<< "$(guest_value RX2)"
  expect_eq "tx2: 4 MiB arrived" "${tx2_bytes:-}" $((4 * MIB))
  expect_eq "rx2: 4 MiB arrived intact" "${rx2_md5:-}" "$(md5sum < "$T/host.bin" | cut -c1-32)"
  below "unthrottled tx at least twice as fast (ms, throttled took ${tx1_ms:-?})" "${tx2_ms:-}" $(((${tx1_ms:-0} + 1) / 2))
  below "unthrottled rx at least twice as fast (ms, throttled took ${rx1_ms:-?})" "${rx2_ms:-}" $(((${rx1_ms:-0} + 1) / 2))
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  ;;
serial)
  # 1000 bytes a second with no burst: the guest prints 20 KB in well under a second; most of it
  # is dropped and counted, and what is written is within the bucket's budget plus the refill.
  put_script "sleep 3
dd if=/dev/zero bs=1000 count=20 2>/dev/null | tr '\\0' x
echo
sleep 2"
  start_ember
  expect_status "PUT /metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  expect_status "PUT /serial" 204 PUT /serial "{\"serial_out_path\": \"$T/serial.out\", \"rate_limiter\": {\"size\": 1000, \"refill_time\": 1000}}"
  boot_source "sh /t.sh"
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *'"rate_limiter":{"one_time_burst":null,"refill_time":1000,"size":1000}'* ]] && pass "vm/config shows the serial limiter" || fail "vm/config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_exit 240
  expect_eq "Ember status" "$RC" 0
  xs=$(tr -cd x < "$T/serial.out" | wc -c)
  dropped=$(metric uart rate_limiter_dropped_bytes)
  at_least "uart rate_limiter_dropped_bytes" "$dropped" 10000
  below "x bytes that reached serial_out_path" "$xs" 12000
  at_least "some output still passes" "$xs" 500
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
