#!/usr/bin/env bash
# The REST API on real KVM, driven only with curl --unix-socket as a user would:
# `api_test.sh CASE`.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: api_test.sh CASE}
SOCK=$T/api.sock  # $T is on /tmp: inside the nested L1 that is tmpfs, where sockets work

ticks() { tr -d '\r' < "$T/console.out" | sed -n 's/^TICK=//p' | tail -n 1; }
wait_ticks_above() { # N TIMEOUT_S
  for _ in $(seq 1 $(($2 * 5))); do local t; t=$(ticks); [[ -n $t && $t -gt $1 ]] && return 0; sleep 0.2; done
  return 1
}
TICK_CMD='i=0; while true; do i=$((i+1)); echo TICK=$i; sleep 0.2; done'
configure_guest() {
  expect_status "PUT /boot-source" 204 PUT /boot-source \
    "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$BASE_ARGS -- $TICK_CMD\"}"
  expect_status "PUT /machine-config" 204 PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
}

case $case_name in
lifecycle)
  start_ember
  expect_status "GET / before start" 200 GET /
  [[ $LAST == *'"state":"Not started"'* ]] && pass "state Not started" || fail "state: $LAST"
  expect_status "PUT /logger" 204 PUT /logger "{\"log_path\": \"$T/api.log\", \"level\": \"Info\", \"show_level\": true}"
  expect_status "PUT /metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  expect_status "SendCtrlAltDel before start" 400 PUT /actions '{"action_type": "SendCtrlAltDel"}'
  expect_status "PATCH /vm before start" 400 PATCH /vm '{"state": "Paused"}'
  configure_guest
  expect_status "PATCH /machine-config" 204 PATCH /machine-config '{"mem_size_mib": 192}'
  expect_status "GET /machine-config" 200 GET /machine-config
  [[ $LAST == *'"mem_size_mib":192'* && $LAST == *'"vcpu_count":2'* ]] && pass "machine-config reflects PUT+PATCH" || fail "machine-config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  expect_status "GET / after start" 200 GET /
  [[ $LAST == *'"state":"Running"'* ]] && pass "state Running" || fail "state: $LAST"
  wait_ticks_above 3 90 && pass "guest workload running (TICK=$(ticks))" || fail "guest never ticked"

  # Pre-boot-only calls are refused after start, and the VM keeps running.
  expect_status "PUT /machine-config after start" 400 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
  expect_status "PUT /boot-source after start" 400 PUT /boot-source "{\"kernel_image_path\": \"$K/bzImage\"}"
  expect_status "second InstanceStart" 400 PUT /actions '{"action_type": "InstanceStart"}'
  # Firecracker 1.16 (rpc_interface.rs) refuses logger, metrics and serial changes after boot.
  expect_status "PUT /logger after start" 400 PUT /logger "{\"log_path\": \"$T/late.log\"}"
  [[ $LAST == *'not supported after starting the microVM'* ]] && pass "PUT /logger after start: Firecracker's message" || fail "PUT /logger: $LAST"
  expect_status "PUT /metrics after start" 400 PUT /metrics "{\"metrics_path\": \"$T/late.json\"}"
  expect_status "PUT /serial after start" 400 PUT /serial "{\"serial_out_path\": \"$T/late.out\"}"
  [[ ! -e $T/late.log && ! -e $T/late.json ]] && pass "refused logger/metrics paths were not created" || fail "late logger/metrics files exist"
  expect_status "bad JSON" 400 PUT /actions '{"action_type": '
  t=$(ticks); wait_ticks_above "$t" 30 && pass "VM still running after refused calls" || fail "VM stopped after refused calls"

  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "GET / paused" 200 GET /
  [[ $LAST == *'"state":"Paused"'* ]] && pass "state Paused" || fail "state: $LAST"
  sleep 1; t1=$(ticks); sleep 3; t2=$(ticks)
  [[ $t1 == "$t2" ]] && pass "no guest output while paused (TICK=$t1)" || fail "guest ran while paused: $t1 -> $t2"
  expect_status "resume" 204 PATCH /vm '{"state": "Resumed"}'
  wait_ticks_above "$t2" 30 && pass "guest resumed (TICK=$(ticks))" || fail "guest did not resume"
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *'"boot-source"'* && $LAST == *'"machine-config"'* ]] && pass "vm/config has the configuration" || fail "vm/config: $LAST"
  expect_status "FlushMetrics" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  grep -q '"put_api_requests"' "$T/metrics.json" && grep -q '"vcpu"' "$T/metrics.json" && pass "metrics line written" || fail "metrics: $(cat "$T/metrics.json")"
  grep -q ':INFO\] API: PATCH /vm -> 204' "$T/api.log" && pass "API-configured logger in use" || fail "api.log: $(tail -n 3 "$T/api.log")"

  expect_status "SendCtrlAltDel" 204 PUT /actions '{"action_type": "SendCtrlAltDel"}'
  wait_exit 90
  expect_eq "Ember status after Ctrl-Alt-Del" "$RC" 0
  [[ ! -e $SOCK ]] && pass "socket removed on exit" || fail "socket left behind"
  ;;
config_file)
  # --config-file with the API: boots at once, API answers while it runs.
  write_config "$T/vm.json" "$K/bzImage" 1 128 "$TICK_CMD"
  start_ember --config-file "$T/vm.json"
  wait_ticks_above 2 90 && pass "guest from --config-file running" || fail "guest never ticked"
  expect_status "GET /" 200 GET /
  [[ $LAST == *'"state":"Running"'* ]] && pass "state Running" || fail "state: $LAST"
  # No metrics sink: Firecracker's FlushMetrics writes nothing and answers 204.
  expect_status "FlushMetrics without metrics configured" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  kill -TERM "$EMBER_PID"
  wait_exit 30
  expect_eq "Ember status after SIGTERM" "$RC" 0
  ;;
bad_clients)
  start_ember
  configure_guest
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_ticks_above 2 90 || fail "guest never ticked"
  # Hostile clients hold their connections open while a normal client is served.
  python3 "$(dirname "$0")/bad_clients.py" "$SOCK" > "$T/bad.out" 2>&1
  prc=$?
  cat "$T/bad.out"
  [[ $prc -eq 0 ]] && pass "hostile clients handled" || fail "bad_clients.py failed ($prc)"
  t=$(ticks); wait_ticks_above "$t" 30 && pass "VM kept running through the hostile clients" || fail "VM stalled"
  expect_status "GET / after the storm" 200 GET /
  expect_status "SendCtrlAltDel" 204 PUT /actions '{"action_type": "SendCtrlAltDel"}'
  wait_exit 90
  expect_eq "Ember status" "$RC" 0
  ;;
drives)
  # Firecracker's getting-started sequence with a root drive, then PATCH /drives swapping a
  # running drive's image: the guest sees the new capacity through a config-change interrupt.
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
  printf '%s\n' 'echo SIZE0=$(cat /sys/block/vdb/size)
i=0
while [ $i -lt 600 ]; do
  s=$(cat /sys/block/vdb/size)
  if [ $s != 2048 ]; then echo SIZE1=$s; break; fi
  i=$((i+1)); sleep 0.2
done
echo MD5=$(md5sum /dev/vdb | cut -c1-32)
echo ROOTDEV=$(grep -c /dev/root /proc/mounts)' > "$T/t.sh"
  debugfs -w -R "write $T/t.sh /t.sh" "$T/root.ext4" >/dev/null 2>&1 || fail "debugfs write"
  head -c $((1024 * 1024)) /dev/urandom > "$T/small.img"
  head -c $((3 * 1024 * 1024)) /dev/urandom > "$T/big.img"
  start_ember
  # The body of Firecracker's getting-started guide.
  expect_status "PUT /logger" 204 PUT /logger "{\"log_path\": \"$T/gs.log\", \"level\": \"Debug\", \"show_level\": true, \"show_log_origin\": true}"
  expect_status "PUT /metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  expect_status "PUT /boot-source (no initrd)" 204 PUT /boot-source \
    "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  expect_status "PUT /drives/rootfs" 204 PUT /drives/rootfs \
    "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  expect_status "PUT /drives/scratch" 204 PUT /drives/scratch \
    "{\"drive_id\": \"scratch\", \"path_on_host\": \"$T/small.img\", \"is_root_device\": false, \"is_read_only\": false, \"io_engine\": \"Sync\"}"
  expect_status "PUT /drives id mismatch" 400 PUT /drives/other \
    "{\"drive_id\": \"scratch\", \"path_on_host\": \"$T/small.img\", \"is_root_device\": false, \"is_read_only\": false}"
  [[ $LAST == *'does not match'* ]] && pass "id mismatch explained" || fail "id mismatch: $LAST"
  expect_status "PUT /drives missing file" 400 PUT /drives/gone \
    "{\"drive_id\": \"gone\", \"path_on_host\": \"$T/nope.img\", \"is_root_device\": false, \"is_read_only\": false}"
  expect_status "second root drive" 400 PUT /drives/root2 \
    "{\"drive_id\": \"root2\", \"path_on_host\": \"$T/small.img\", \"is_root_device\": true, \"is_read_only\": true}"
  expect_status "PATCH /drives before start" 400 PATCH /drives/scratch "{\"drive_id\": \"scratch\", \"path_on_host\": \"$T/big.img\"}"
  expect_status "PUT /machine-config" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}'
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *'"drive_id":"rootfs"'* && $LAST == *'"drive_id":"scratch"'* && $LAST == *'"io_engine":"Sync"'* && $LAST != *'"gone"'* ]] \
    && pass "vm/config lists both drives, not the refused ones" || fail "vm/config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  for _ in $(seq 1 450); do grep -q '^SIZE0=' "$T/console.out" && break; sleep 0.2; done
  OUT=$T/console.out
  expect_eq "guest sees the 1 MiB scratch drive" "$(guest_value SIZE0)" 2048
  expect_status "PATCH unknown drive" 400 PATCH /drives/nosuch '{"drive_id": "nosuch", "path_on_host": "/dev/null"}'
  expect_status "PATCH to a missing file" 400 PATCH /drives/scratch "{\"drive_id\": \"scratch\", \"path_on_host\": \"$T/nope.img\"}"
  expect_status "PATCH /drives/scratch" 204 PATCH /drives/scratch "{\"drive_id\": \"scratch\", \"path_on_host\": \"$T/big.img\"}"
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  expect_eq "guest sees the new capacity" "$(guest_value SIZE1)" 6144
  expect_eq "guest reads the new image" "$(guest_value MD5)" "$(md5sum < "$T/big.img" | cut -c1-32)"
  expect_eq "root is the rootfs drive" "$(guest_value ROOTDEV)" 1
  grep -E -q ':INFO:[^]]*:[0-9]+\] API: PUT /drives/rootfs' "$T/gs.log" && grep -q 'drive scratch now uses' "$T/gs.log" && pass "getting-started logger: level and origin shown" || fail "gs.log: $(tail -n 3 "$T/gs.log")"
  line=$(grep '"block_scratch"' "$T/metrics.json" | tail -n 1)
  python3 - "$T/metrics.json" <<'PY' && pass "block metrics: update_count 1, reads counted" || fail "block metrics: $(tail -c 600 "$T/metrics.json")"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tot = lambda g, k: sum(l.get(g, {}).get(k, 0) for l in lines)
assert tot("block_scratch", "update_count") == 1, tot("block_scratch", "update_count")
assert tot("block_scratch", "read_bytes") >= 3 * 1024 * 1024, tot("block_scratch", "read_bytes")
assert tot("block", "read_count") >= tot("block_scratch", "read_count") > 0
PY
  ;;
drive_fallbacks)
  # io_uring refused (as by a container seccomp profile: EMBER_IO_URING_SETUP_ERRNO=1 is EPERM
  # from io_uring_setup) on an Async drive whose image is not whole sectors: the boot goes on
  # with the Sync engine and a warning; the guest sees the whole sectors only (Firecracker).
  head -c $((3 * 1024 * 1024 + 100)) /dev/urandom > "$T/odd.img"
  export EMBER_IO_URING_SETUP_ERRNO=1
  start_ember
  unset EMBER_IO_URING_SETUP_ERRNO
  expect_status "PUT /boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$BASE_ARGS -- echo SIZE=\$(cat /sys/block/vda/size); echo MD5=\$(md5sum /dev/vda | cut -c1-32); $TICK_CMD\"}"
  expect_status "PUT /drives/data (Async by default)" 204 PUT /drives/data \
    "{\"drive_id\": \"data\", \"path_on_host\": \"$T/odd.img\", \"is_root_device\": false, \"is_read_only\": true}"
  expect_status "GET /vm/config before start" 200 GET /vm/config
  [[ $LAST == *'"io_engine":"Async"'* ]] && pass "before start: Ember's default engine shown (Async)" || fail "vm/config: $LAST"
  expect_status "InstanceStart with io_uring refused" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_ticks_above 1 120 && pass "guest boots with io_uring refused" || fail "guest never ticked"
  OUT=$T/console.out
  expect_eq "guest sees the whole sectors of a 3 MiB + 100 B image" "$(guest_value SIZE)" 6144
  expect_eq "guest reads the image through the Sync engine" "$(guest_value MD5)" "$(head -c $((3 * 1024 * 1024)) "$T/odd.img" | md5sum | cut -c1-32)"
  expect_status "GET /vm/config after start" 200 GET /vm/config
  [[ $LAST == *'"io_engine":"Sync"'* ]] && pass "after start: the engine that runs is shown (Sync)" || fail "vm/config: $LAST"
  grep -q 'drive data: io_uring is unavailable (.*Operation not permitted); using the Sync I/O engine' "$T/ember.log" \
    && pass "io_uring fallback logged" || fail "no fallback warning: $(tail -n 5 "$T/ember.log")"
  grep -q 'odd.img: disk size 3145828 is not a multiple of sector size 512' "$T/ember.log" \
    && pass "partial sector warned about" || fail "no size warning: $(tail -n 5 "$T/ember.log")"
  kill -TERM "$EMBER_PID"
  wait_exit 30
  expect_eq "Ember status after SIGTERM" "$RC" 0
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
[[ -n ${EMBER_PID:-} ]] && kill -9 "$EMBER_PID" 2>/dev/null
finish
