#!/usr/bin/env bash
# Snapshots on real KVM (PUT /snapshot/create and /snapshot/load, Firecracker 1.16's API):
# `snapshot_test.sh CASE`.
#   full: a 2-vCPU guest with a ticking counter, 32 MiB of random data in its tmpfs and a
#         writable root disk is paused and snapshotted (Full), and that Ember is killed. A fresh
#         Ember first refuses damaged snapshots (truncated, a flipped byte, a memory file shorter
#         than RAM) with 400 and stays loadable, then loads the good one paused, resumes it: the
#         counter goes on from where it stopped, the data's hash is unchanged, the serial console
#         takes commands, and a file the restored guest writes lands in the disk image. The
#         restored VM is then snapshotted into the memory file it runs from, keeps running,
#         and that snapshot loads with resume_vm in a third Ember and counts on.
#   diff: a guest booted with track_dirty_pages and 64 MiB of random data in tmpfs is snapshotted
#         (Full), resumed, rewrites 16 MiB of that data (and zeroes 1 MiB more), is snapshotted
#         again (Diff) and killed. The Diff's memory file holds far fewer blocks than the Full's;
#         `ember snapshot-merge` layers it onto the Full's, and the Diff's state loaded with the
#         merged memory has the later data and counts on from where the Diff stopped. Loaded
#         with track_dirty_pages, it rewrites 4 MiB and takes a second Diff (only the pages since
#         the load), merged in place; that loads and goes on too. Before that in-place merge,
#         the first Diff's state loads once more with the merged memory served through
#         mem_backend Uffd by `ember uffd-handler`: same data, and the counter goes on.
#   diff-untracked: the same without track_dirty_pages: the Diff holds every resident page
#         (Firecracker 1.16's mincore fallback), so it is bigger, and still merges and loads.
#   clock: a 1-vCPU guest on kvm-clock prints a counter and /proc/uptime every second; it is
#         snapshotted, and 5 s later loaded twice. Without clock_realtime the uptime across the
#         snapshot grows by no more than a normal tick (kvmclock resumes where it stopped); with
#         it, by at least the 5 s (KVM_CLOCK_REALTIME). Never backward; the counter goes on.
#   clones: a 1-vCPU 128 MiB guest on a read-only root answers console lines (PONG) and echoes
#         on vsock port 52; it is snapshotted and scripts/clone restores it once alone, then 8
#         times at once from the one memory file: every clone answers on its own console and on
#         its own vsock socket (vsock_override), and the clones' summed Pss stays below 8 times
#         the lone clone's Rss, their guest-RAM mappings' Pss below half their Rss (shared pages).
#   uffd: the same guest, snapshotted, then loaded with mem_backend Uffd and its pages served
#         lazily by `ember uffd-handler` (after a 400 for a socket nobody listens on): the
#         counter goes on, the data's hash is unchanged, the console and the disk work, and
#         the handler copied some but not all of the guest's pages.
#   devices: every device kind across one Full snapshot (tests/integration/snapshot_devices.sh).
# `devices` runs in a network namespace of its own (its TAPs exist only there).
if [[ ${1:-} == devices && -z ${EMBER_IN_NETNS:-} ]]; then
  exec env EMBER_IN_NETNS=1 unshare --net bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: snapshot_test.sh CASE}
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"

# wait_for KEY TIMEOUT_S: wait_line, with the console and log of a guest that never said KEY.
wait_for() { wait_line "$1" "$2" || { fail "no $1= line on the console"; give_up; }; }
ticks() { tr -d '\r' < "$T/$1.out" | sed -n 's/^TICK=\([0-9]*\)$/\1/p'; }
# counter_goes_on NAME BEFORE LABEL: waits for NAME's second tick and checks that its first tick
# follows BEFORE, the source's last (one tick may have been under way when it was saved). Sets
# FIRST to that first tick.
counter_goes_on() {
  for _ in $(seq 1 150); do [[ $(ticks "$1" | wc -l) -ge 2 ]] && break; sleep 0.2; done
  FIRST=$(ticks "$1" | head -n 1)
  [[ -n $2 && -n $FIRST && ( $FIRST -eq $(($2 + 1)) || $FIRST -eq $(($2 + 2)) ) ]] && pass "$3: the counter went on: $2 before, $FIRST after" \
    || fail "$3: counter '$2' before, '$FIRST' after"
}
give_up() {
  echo "--- console and log:" >&2; tail -n 20 "$OUT" "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  finish
}

# diff_uffd_load N DATA: the Diff's state with the merged memory once more, its pages served by
# `ember uffd-handler` from merged.mem (holes in the sparse file are zero pages): the counter
# goes on from N and the data hashes to DATA.
diff_uffd_load() {
  local n=$1 data=$2
  mkfifo "$T/u.in"
  exec 6<> "$T/u.in"
  "$EMBER_BIN" uffd-handler --accept-timeout 120 "$T/uffd.sock" "$T/merged.mem" 2> "$T/uffd.err" &
  local hpid=$!
  for _ in $(seq 1 100); do grep -q listening "$T/uffd.err" 2>/dev/null && break; sleep 0.1; done
  SOCK=$T/u.sock
  EMBER_CONSOLE=$T/u.out EMBER_STDIN=$T/u.in start_ember
  expect_status "load the Diff's state with merged memory through Uffd" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/diff.snap\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"$T/uffd.sock\"}, \"resume_vm\": true}"
  counter_goes_on u "$n" "Diff through Uffd"
  echo 'echo DATA2=$(md5sum /tmp/d | cut -c1-32)' >&6
  wait_for DATA2 150
  expect_eq "tmpfs data after the merged restore through Uffd" "$(guest_value DATA2)" "$data"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 6>&-
  # The handler ends with the VMM (its uffd and socket close) and reports what it served.
  for _ in $(seq 1 100); do kill -0 "$hpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$hpid" 2>/dev/null; then fail "the handler outlived the VMM"; kill -9 "$hpid"; fi
  wait "$hpid"
  local copied; copied=$(sed -n 's/^pages_copied=\([0-9]*\).*/\1/p' "$T/uffd.err")
  [[ -n $copied && $copied -gt 0 ]] && pass "the handler served $copied pages of the merged file" \
    || { fail "handler report: $(cat "$T/uffd.err")"; }
}

# diff_case TRACK: the `diff` (TRACK=true) and `diff-untracked` (false) cases.
diff_case() {
  local track=$1
  printf '%s\n' 'cd /tmp' 'head -c 67108864 /dev/urandom > d' 'echo DATA=$(md5sum d | cut -c1-32)' 'i=0' \
    'while true; do i=$((i+1)); echo TICK=$i; if read -t 1 c; then eval "$c"; fi; done' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  mkfifo "$T/a.in" "$T/b.in"
  exec 3<> "$T/a.in"
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out EMBER_STDIN=$T/a.in start_ember
  expect_status "metrics" 204 PUT /metrics "{\"metrics_path\": \"$T/metrics.json\"}"
  expect_status "machine-config" 204 PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": 256, \"track_dirty_pages\": $track}"
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  expect_status "rootfs" 204 PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_for DATA 400
  local data_a; data_a=$(guest_value DATA)
  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  local t0; t0=$(date +%s%N)
  expect_status "Full snapshot" 204 PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$T/full.snap\", \"mem_file_path\": \"$T/full.mem\"}"
  local full_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  expect_status "resume" 204 PATCH /vm '{"state": "Resumed"}'
  echo 'dd if=/dev/urandom of=/tmp/d bs=1M count=16 seek=8 conv=notrunc 2>/dev/null; dd if=/dev/zero of=/tmp/d bs=1M count=1 seek=40 conv=notrunc 2>/dev/null; echo DATAB=$(md5sum /tmp/d | cut -c1-32)' >&3
  if ! wait_line DATAB 150; then
    local t1; t1=$(ticks a | tail -n 1); sleep 5
    fail "no DATAB= line after the Full snapshot (ticks $t1, then $(ticks a | tail -n 1) 5 s later)"
    tail -n 20 "$T/ember.log" >&2
    give_up
  fi
  local data_b; data_b=$(guest_value DATAB)
  [[ -n $data_b && $data_b != "$data_a" ]] && pass "the guest rewrote its data" || fail "data after rewrite: '$data_b' (before '$data_a')"
  expect_status "pause again" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "Diff into a missing directory" 400 PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$T/no/d.snap\", \"mem_file_path\": \"$T/no/d.mem\"}"
  t0=$(date +%s%N)
  expect_status "Diff snapshot" 204 PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$T/diff.snap\", \"mem_file_path\": \"$T/diff.mem\"}"
  local diff_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  expect_status "FlushMetrics" 204 PUT /actions '{"action_type": "FlushMetrics"}'
  grep -q '"diff_create_snapshot":[1-9]' "$T/metrics.json" && pass "latencies_us.diff_create_snapshot reported" \
    || fail "no diff_create_snapshot in metrics: $(tail -c 600 "$T/metrics.json")"
  sleep 1
  local n; n=$(ticks a | tail -n 1)
  local n_diff=$n
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 3>&-
  expect_eq "Diff memory file size" "$(stat -c %s "$T/diff.mem")" $((256 << 20))
  local full_b=$(( $(stat -c %b "$T/full.mem") * $(stat -c %B "$T/full.mem") ))
  local diff_b=$(( $(stat -c %b "$T/diff.mem") * $(stat -c %B "$T/diff.mem") ))
  echo "Full: ${full_ms} ms, $((full_b >> 10)) KiB allocated; Diff: ${diff_ms} ms, $((diff_b >> 10)) KiB allocated (under TCG)"
  [[ $diff_b -ge $((17 << 20)) ]] && pass "the Diff holds at least the 17 MiB rewritten" || fail "Diff too small: $diff_b bytes"
  if [[ $track == true ]]; then
    [[ $diff_b -lt $((full_b / 2)) ]] && pass "the Diff ($((diff_b >> 20)) MiB) is much smaller than the Full ($((full_b >> 20)) MiB)" \
      || fail "Diff $diff_b bytes vs Full $full_b bytes"
  fi

  # Merge: a mismatched file is refused; then the Diff onto a copy of the Full's memory.
  head -c $((128 << 20)) "$T/full.mem" > "$T/short.mem"
  local msg; msg=$("$EMBER_BIN" snapshot-merge "$T/short.mem" "$T/diff.mem" 2>&1); local rc=$?
  [[ $rc -ne 0 && $msg == *'not layers of one VM'* ]] && pass "size mismatch refused" || fail "merge onto a short base: rc $rc, $msg"
  local full_sum; full_sum=$(md5sum < "$T/full.mem")
  msg=$("$EMBER_BIN" snapshot-merge "$T/full.mem" "$T/diff.mem" --out "$T/merged.mem" 2>&1)
  expect_eq "snapshot-merge status" $? 0
  echo "$msg"
  expect_eq "the base is left as it was with --out" "$(md5sum < "$T/full.mem")" "$full_sum"

  # The Diff's state with the merged memory.
  exec 4<> "$T/b.in"
  SOCK=$T/b.sock
  EMBER_CONSOLE=$T/b.out EMBER_STDIN=$T/b.in start_ember
  expect_status "load the Diff's state with merged memory" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/diff.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/merged.mem\"}, \"resume_vm\": true, \"track_dirty_pages\": $track}"
  grep -q 'Diff snapshot' "$T/ember.log" && pass "loading a Diff's state is logged" || fail "no Diff warning in the log"
  counter_goes_on b "$n" "Diff"
  echo 'echo DATA2=$(md5sum /tmp/d | cut -c1-32)' >&4
  wait_for DATA2 300
  expect_eq "tmpfs data after the merged restore" "$(guest_value DATA2)" "$data_b"
  if [[ $track != true ]]; then
    kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
    exec 4>&-
    return
  fi
  # A chain: the restored VM (tracking from the load's track_dirty_pages) rewrites 4 MiB, takes
  # a second Diff holding only what changed since the load, merged in place onto merged.mem.
  echo 'dd if=/dev/urandom of=/tmp/d bs=1M count=4 seek=30 conv=notrunc 2>/dev/null; echo DATAC=$(md5sum /tmp/d | cut -c1-32)' >&4
  wait_for DATAC 150
  local data_c; data_c=$(guest_value DATAC)
  expect_status "pause the restored VM" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "second Diff" 204 PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$T/d2.snap\", \"mem_file_path\": \"$T/d2.mem\"}"
  sleep 1
  n=$(ticks b | tail -n 1)
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 4>&-
  # merged.mem is still the first merge (the in-place one comes below).
  diff_uffd_load "$n_diff" "$data_b"
  local d2_b=$(( $(stat -c %b "$T/d2.mem") * $(stat -c %B "$T/d2.mem") ))
  echo "second Diff (after a load with track_dirty_pages): $((d2_b >> 10)) KiB allocated"
  [[ $d2_b -ge $((4 << 20)) && $d2_b -lt $((32 << 20)) ]] && pass "the second Diff holds what changed since the load" \
    || fail "second Diff: $d2_b bytes"
  "$EMBER_BIN" snapshot-merge "$T/merged.mem" "$T/d2.mem" > /dev/null
  expect_eq "in-place snapshot-merge status" $? 0
  mkfifo "$T/c.in"
  exec 5<> "$T/c.in"
  SOCK=$T/c.sock
  EMBER_CONSOLE=$T/c.out EMBER_STDIN=$T/c.in start_ember
  expect_status "load the second Diff's state" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/d2.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/merged.mem\"}, \"resume_vm\": true}"
  counter_goes_on c "$n" "second Diff (chain)"
  echo 'echo DATA3=$(md5sum /tmp/d | cut -c1-32)' >&5
  wait_for DATA3 150
  expect_eq "tmpfs data after the chained restore" "$(guest_value DATA3)" "$data_c"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  exec 5>&-
}

# uffd_case: see `uffd` above. Self-contained (its own boot and snapshot) so other cases can
# change independently.
uffd_case() {
  printf '%s\n' 'cd /tmp' 'head -c 33554432 /dev/urandom > d' 'echo DATA=$(md5sum d | cut -c1-32)' 'i=0' \
    'while true; do i=$((i+1)); echo TICK=$i; if read -t 1 c; then eval "$c"; fi; done' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out start_ember
  expect_status "machine-config" 204 PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  expect_status "rootfs" 204 PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_for DATA 300
  DATA=$(tr -d '\r' < "$T/a.out" | sed -n 's/^DATA=//p')
  for _ in $(seq 1 150); do [[ $(ticks a | tail -n 1) -ge 3 ]] && break; sleep 0.2; done
  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "snapshot/create" 204 PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  N=$(ticks a | tail -n 1)
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  [[ -n $N && $N -ge 3 ]] && pass "the counter reached $N before the snapshot" || fail "counter before snapshot: '$N'"

  mkfifo "$T/b.in"
  exec 3<> "$T/b.in"
  SOCK=$T/b.sock
  EMBER_CONSOLE=$T/b.out EMBER_STDIN=$T/b.in start_ember
  # Nobody listens on the handler's socket yet: Firecracker's error, and nothing started.
  expect_status "load with no handler" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"$T/uffd.sock\"}}"
  [[ $LAST == *'Failed to connect to UDS Unix stream'* ]] && pass "missing handler named as Firecracker does" || fail "no handler: $LAST"
  expect_status "GET / after the refusal" 200 GET / ''
  [[ $LAST == *'"state":"Not started"'* ]] && pass "nothing started" || fail "state: $LAST"

  "$EMBER_BIN" uffd-handler --accept-timeout 120 "$T/uffd.sock" "$T/vm.mem" 2> "$T/uffd.err" &
  HANDLER_PID=$!
  for _ in $(seq 1 100); do grep -q listening "$T/uffd.err" 2>/dev/null && break; sleep 0.1; done
  t0=$(date +%s%N)
  expect_status "snapshot/load Uffd" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"$T/uffd.sock\"}, \"resume_vm\": false}"
  echo "snapshot load (Uffd) took $(( ($(date +%s%N) - t0) / 1000000 )) ms (under TCG)"
  expect_status "GET / after load" 200 GET / ''
  [[ $LAST == *'"state":"Paused"'* ]] && pass "loaded paused" || fail "state after load: $LAST"
  expect_status "resume" 204 PATCH /vm '{"state": "Resumed"}'
  counter_goes_on b "$N" "restore"
  first=$FIRST
  echo 'echo DATA2=$(md5sum /tmp/d | cut -c1-32)' >&3
  wait_for DATA2 120
  expect_eq "tmpfs data after a Uffd restore" "$(tr -d '\r' < "$T/b.out" | sed -n 's/^DATA2=//p')" "$DATA"
  echo 'echo written-after-uffd-restore > /after.txt; sync; echo WROTE=1' >&3
  wait_for WROTE 120
  echo 'reboot -f' >&3
  wait_exit 60
  exec 3>&-
  expect_eq "restored Ember status" "$RC" 0
  expect_eq "file written after restore" "$(debugfs -R 'cat /after.txt' "$T/root.ext4" 2>/dev/null)" written-after-uffd-restore
  # The handler ends with the VMM and reports what it served.
  for _ in $(seq 1 100); do kill -0 "$HANDLER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$HANDLER_PID" 2>/dev/null; then fail "the handler outlived the VMM"; kill -9 "$HANDLER_PID"; fi
  wait "$HANDLER_PID"; hrc=$?
  expect_eq "handler status" "$hrc" 0
  stats=$(grep '^pages_copied=' "$T/uffd.err")
  echo "handler: $stats (guest RAM: $(( 256 << 8 )) pages)"
  copied=$(sed -n 's/^pages_copied=\([0-9]*\).*/\1/p' <<< "$stats")
  [[ -n $copied && $copied -gt 0 && $copied -lt $(( 256 << 8 )) ]] && pass "lazy: $copied of $(( 256 << 8 )) pages copied" \
    || { fail "pages copied: '$stats'"; cat "$T/uffd.err" >&2; }
}

case $case_name in
full)
  # The guest: random data in tmpfs, then a counter that also runs what arrives on its console.
  printf '%s\n' 'cd /tmp' 'head -c 33554432 /dev/urandom > d' 'echo DATA=$(md5sum d | cut -c1-32)' 'i=0' \
    'while true; do i=$((i+1)); echo TICK=$i; if read -t 1 c; then eval "$c"; fi; done' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out start_ember
  expect_status "machine-config" 204 PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  expect_status "rootfs" 204 PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  expect_status "load after configuring" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  [[ $LAST == *'not allowed after configuring boot-specific resources'* ]] && pass "load refused by Firecracker's rule" || fail "load: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_for DATA 300
  DATA=$(tr -d '\r' < "$T/a.out" | sed -n 's/^DATA=//p')
  for _ in $(seq 1 150); do [[ $(ticks a | tail -n 1) -ge 3 ]] && break; sleep 0.2; done
  expect_status "create while running" 400 PUT /snapshot/create "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  [[ $LAST == *'pause it first'* ]] && pass "create needs a paused VM" || fail "create while running: $LAST"
  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "create into a missing directory" 400 PUT /snapshot/create "{\"snapshot_path\": \"$T/no/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  [[ $LAST == *"$T/no/vm.snap"* ]] && pass "the unwritable path is named" || fail "missing dir: $LAST"
  t0=$(date +%s%N)
  expect_status "snapshot/create" 204 PUT /snapshot/create "{\"snapshot_type\": \"Full\", \"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  echo "snapshot create took $(( ($(date +%s%N) - t0) / 1000000 )) ms (under TCG)"
  sleep 1
  N=$(ticks a | tail -n 1)
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  [[ -n $N && $N -ge 3 ]] && pass "the counter reached $N before the snapshot" || fail "counter before snapshot: '$N'"
  expect_eq "memory file size" "$(stat -c %s "$T/vm.mem")" $((256 << 20))
  used=$(( $(stat -c %b "$T/vm.mem") * $(stat -c %B "$T/vm.mem") ))
  [[ $used -lt $((200 << 20)) ]] && pass "memory file is sparse ($((used >> 20)) MiB allocated of 256)" || fail "memory file not sparse: $used bytes allocated"
  expect_eq "--describe-snapshot" "$("$EMBER_BIN" --describe-snapshot "$T/vm.snap")" "$("$EMBER_BIN" --snapshot-version)"

  # Damaged inputs: each a 400 that leaves the fresh Ember able to load the good snapshot.
  size=$(stat -c %s "$T/vm.snap")
  head -c $((size / 2)) "$T/vm.snap" > "$T/trunc.snap"
  cp "$T/vm.snap" "$T/flip.snap"
  printf '\x55' | dd of="$T/flip.snap" bs=1 seek=$((size / 3)) conv=notrunc status=none
  head -c $((128 << 20)) "$T/vm.mem" > "$T/short.mem"
  # The restored guest's console input: a FIFO held open read-write here, so opening it for
  # Ember's stdin does not block and Ember never sees EOF.
  mkfifo "$T/b.in"
  exec 3<> "$T/b.in"
  SOCK=$T/b.sock
  EMBER_CONSOLE=$T/b.out EMBER_STDIN=$T/b.in start_ember
  expect_status "load a truncated snapshot" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/trunc.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}}"
  [[ $LAST == *'truncated'* ]] && pass "truncation named" || fail "truncated: $LAST"
  expect_status "load a corrupted snapshot" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/flip.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}}"
  [[ $LAST == *'corrupted'* ]] && pass "corruption named" || fail "corrupted: $LAST"
  expect_status "load with a short memory file" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/short.mem\"}}"
  [[ $LAST == *'short.mem holds 134217728 bytes'* ]] && pass "short memory file named" || fail "short mem: $LAST"
  expect_status "load with a missing memory file" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/none.mem\"}"
  expect_status "GET / after refusals" 200 GET / ''
  [[ $LAST == *'"state":"Not started"'* ]] && pass "nothing started" || fail "state: $LAST"

  t0=$(date +%s%N)
  expect_status "snapshot/load" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}, \"resume_vm\": false}"
  echo "snapshot load took $(( ($(date +%s%N) - t0) / 1000000 )) ms (under TCG)"
  expect_status "GET / after load" 200 GET / ''
  [[ $LAST == *'"state":"Paused"'* ]] && pass "loaded paused" || fail "state after load: $LAST"
  expect_status "GET /vm/config" 200 GET /vm/config ''
  [[ $LAST == *'"vcpu_count":2'* && $LAST == *'root.ext4'* ]] && pass "restored configuration shown" || fail "vm/config: $LAST"
  expect_status "load twice" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  sleep 1
  [[ -z $(ticks b) ]] && pass "no tick while paused" || fail "ticks while paused: $(ticks b | head -3)"
  expect_status "resume" 204 PATCH /vm '{"state": "Resumed"}'
  counter_goes_on b "$N" "restore"
  first=$FIRST
  echo 'echo DATA2=$(md5sum /tmp/d | cut -c1-32)' >&3
  wait_for DATA2 120
  expect_eq "tmpfs data after restore" "$(tr -d '\r' < "$T/b.out" | sed -n 's/^DATA2=//p')" "$DATA"
  echo 'echo written-after-restore > /after.txt; sync; echo WROTE=1' >&3
  wait_for WROTE 120
  # A snapshot of the restored VM into the very memory file it runs from (written beside it and
  # renamed over it, so the running guest keeps its mapping of the old file).
  expect_status "pause the restored VM" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "snapshot into its own memory file" 204 PUT /snapshot/create "{\"snapshot_path\": \"$T/vm2.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  expect_status "resume the restored VM" 204 PATCH /vm '{"state": "Resumed"}'
  echo 'echo DATA3=$(md5sum /tmp/d | cut -c1-32)' >&3
  wait_for DATA3 120
  expect_eq "data after snapshotting into its own memory file" "$(guest_value DATA3)" "$DATA"
  echo 'reboot -f' >&3
  wait_exit 60
  exec 3>&-
  expect_eq "restored Ember status" "$RC" 0
  expect_eq "file written after restore" "$(debugfs -R 'cat /after.txt' "$T/root.ext4" 2>/dev/null)" written-after-restore

  # That second snapshot, loaded with resume_vm: it runs at once and goes on counting.
  SOCK=$T/c.sock
  EMBER_CONSOLE=$T/c.out start_ember
  expect_status "load the second snapshot, resumed" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm2.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}, \"resume_vm\": true}"
  expect_status "GET / after a resumed load" 200 GET / ''
  [[ $LAST == *'"state":"Running"'* ]] && pass "running after resume_vm" || fail "state: $LAST"
  for _ in $(seq 1 150); do [[ $(ticks c | wc -l) -ge 2 ]] && break; sleep 0.2; done
  second=$(ticks c | head -n 1)
  [[ -n $second && $second -gt $first ]] && pass "the second restore counts on: $second after $first" || fail "second restore's counter: '$second' (first restore began at $first)"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  ;;
diff) diff_case true ;;
diff-untracked) diff_case false ;;
clock)
  # uptime_ticks NAME: "counter uptime" per tick line T=counter:uptime.
  uptime_ticks() { tr -d '\r' < "$T/$1.out" | sed -n 's/^T=\([0-9]*\):\([0-9.]*\)$/\1 \2/p'; }
  # clock_load NAME CLOCK_REALTIME: a fresh Ember loading vm.snap resumed; waits for 3 ticks.
  clock_load() {
    SOCK=$T/$1.sock
    EMBER_CONSOLE=$T/$1.out start_ember
    expect_status "load, clock_realtime $2" 204 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}, \"resume_vm\": true, \"clock_realtime\": $2}"
    for _ in $(seq 1 300); do [[ $(uptime_ticks "$1" | wc -l) -ge 3 ]] && break; sleep 0.2; done
    kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  }
  # check_across NAME MAX_S MIN_S: the restored guest's first tick follows the source's last, its
  # uptime moved forward by at most MAX_S and at least MIN_S; no uptime ever goes back.
  check_across() {
    local first up prev
    read -r first up < <(uptime_ticks "$1" | head -n 1)
    [[ -n $first && ( $first -eq $((N + 1)) || $first -eq $((N + 2)) ) ]] && pass "$1: the counter went on: $N, then $first" \
      || fail "$1: counter after restore: $N before, '$first' after"
    local delta
    delta=$(awk -v a="$U" -v b="${up:-0}" 'BEGIN { printf "%.2f", b - a }')
    awk -v d="$delta" -v hi="$2" -v lo="$3" 'BEGIN { exit !(d <= hi && d >= lo) }' \
      && pass "$1: uptime across the snapshot +$delta s (within $3..$2)" || fail "$1: uptime across the snapshot +$delta s, wanted $3..$2 ($U, then $up)"
    prev=$U
    while read -r _ up; do
      awk -v a="$prev" -v b="$up" 'BEGIN { exit !(b >= a) }' || fail "$1: uptime went back: $prev, then $up"
      prev=$up
    done < <(uptime_ticks "$1")
  }
  CMD='echo CS=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource); i=0; while true; do i=$((i+1)); read u r </proc/uptime; echo T=$i:$u; sleep 1; done'
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out start_ember
  expect_status "machine-config" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
  # kvmclock rates itself below an invariant TSC (kvmclock.c): the guest is told to use it.
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$BASE_ARGS clocksource=kvm-clock -- $CMD\"}"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  for _ in $(seq 1 600); do [[ $(uptime_ticks a | wc -l) -ge 4 ]] && break; kill -0 "$EMBER_PID" 2>/dev/null || break; sleep 0.2; done
  expect_eq "guest clocksource" "$(guest_value CS)" kvm-clock
  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "snapshot/create" 204 PUT /snapshot/create "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  read -r N U < <(uptime_ticks a | tail -n 1)
  # The longest tick interval before the snapshot: what one tick takes on this (TCG) host.
  TICK=$(uptime_ticks a | awk 'NR > 1 && $2 - p > m { m = $2 - p } { p = $2 } END { printf "%.2f", m }')
  [[ -n $N && $N -ge 4 ]] && pass "counter $N, uptime $U s, longest tick $TICK s before the snapshot" || { fail "no ticks before the snapshot"; give_up; }
  sleep 5
  # Without clock_realtime: at most one tick plus 1 s, although 5 s passed.
  clock_load b false
  check_across b "$(awk -v t="$TICK" 'BEGIN { print t + 1 }')" 0
  # With it: KVM_GET_CLOCK has a realtime reading only in master-clock mode (host clocksource tsc).
  # EMBER_EXPECT_TSC_HOST=1 in an L1 (scripts/test's kvm-tsc stage boots it with tsc=reliable)
  # makes the positive path mandatory.
  host_cs=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)
  [[ ${EMBER_EXPECT_TSC_HOST:-} != 1 || ${EMBER_IN_L1:-} != 1 || $host_cs == tsc ]] && pass "host clocksource $host_cs" || fail "host clocksource $host_cs, expected tsc"
  if [[ $host_cs == tsc ]]; then
    clock_load c true
    check_across c 100000 5
  else
    SOCK=$T/c.sock
    EMBER_CONSOLE=$T/c.out start_ember
    expect_status "load, clock_realtime true, no realtime in the state" 400 PUT /snapshot/load "{\"snapshot_path\": \"$T/vm.snap\", \"mem_backend\": {\"backend_type\": \"File\", \"backend_path\": \"$T/vm.mem\"}, \"clock_realtime\": true}"
    [[ $LAST == *'clock_realtime requested but not present in the snapshot state'* ]] && pass "Firecracker's error" || fail "load: $LAST"
    kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  fi
  ;;
clones)
  gcc -static -O2 -Wall -Wextra -Werror -o "$T/vsock_echo" "$(dirname "$0")/guest/vsock_echo.c" || { fail "cannot build vsock_echo.c"; finish; }
  put_file "$T/vsock_echo" /vsock_echo 0100755
  printf '%s\n' '/vsock_echo listen 52 &' 'sleep 1' 'echo READY=1' 'while read l; do echo PONG $l; done' > "$T/t.sh"
  put_file "$T/t.sh" /t.sh 0100644
  SOCK=$T/a.sock
  EMBER_CONSOLE=$T/a.out start_ember
  expect_status "machine-config" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
  expect_status "boot-source" 204 PUT /boot-source "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  # Read-only: every clone runs from this one image (a writable one must not be shared).
  expect_status "rootfs" 204 PUT /drives/rootfs "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": true}"
  expect_status "vsock" 204 PUT /vsock "{\"guest_cid\": 3, \"uds_path\": \"$T/src.vsock\"}"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_for READY 300
  expect_status "pause" 204 PATCH /vm '{"state": "Paused"}'
  expect_status "snapshot/create" 204 PUT /snapshot/create "{\"snapshot_path\": \"$T/vm.snap\", \"mem_file_path\": \"$T/vm.mem\"}"
  kill -9 "$EMBER_PID"; wait "$EMBER_PID" 2>/dev/null
  # The source's socket file stays behind: a clone without vsock_override could not bind it.
  [[ -S $T/src.vsock ]] && pass "the source's vsock socket is still there" || fail "no $T/src.vsock"
  CLONE=$(dirname "$0")/../../scripts/clone
  EMBER_BIN=$EMBER_BIN python3 "$CLONE" -n 8 --snapshot "$T/vm.snap" --mem "$T/vm.mem" --vsock-port 52 --baseline \
    --dir "$T/clones" --json "$T/clones.json" --timeout 400 2> "$T/clone.err"
  rc=$?
  cat "$T/clone.err"
  expect_eq "scripts/clone status" "$rc" 0
  [[ -f $T/clones.json ]] || { fail "no clones.json"; finish; }
  python3 - "$T/clones.json" <<'PY' || fail "clone figures (above)"
import json, sys
r = json.load(open(sys.argv[1]))
bad = []
base = r["baseline"]
one_rss = base["rss_kib"]
rnd = r["rounds"][0]
if rnd["errors"] or base["errors"]:
    bad.append(f"errors: {base['errors'] + rnd['errors']}")
for c in rnd["clones"]:
    if not all(k in c for k in ("t_loaded", "t_respond", "t_vsock")):
        bad.append(f"clone {c['clone']} did not answer everywhere: {c}")
s = rnd["summary"]
print(f"FIGURES: one restore alone: loaded {base['clones'][0]['t_loaded']} ms, answered {base['clones'][0]['t_respond']} ms, Rss {one_rss >> 10} MiB")
print(f"FIGURES: 8 clones: loaded p50 {s['t_loaded']['p50']} p95 {s['t_loaded']['p95']} ms; answered p50 {s['t_respond']['p50']} p95 {s['t_respond']['p95']} ms; vsock p95 {s['t_vsock']['p95']} ms")
print(f"FIGURES: 8 clones: sum Rss {rnd['rss_kib'] >> 10} MiB, sum Pss {rnd['pss_kib'] >> 10} MiB; guest RAM mappings Rss {rnd['ram_rss_kib'] >> 10} MiB, Pss {rnd['ram_pss_kib'] >> 10} MiB")
if not rnd["pss_kib"] < 8 * one_rss:
    bad.append(f"sum Pss {rnd['pss_kib']} KiB >= 8 x one clone's Rss {one_rss} KiB: no sharing")
if not 2 * rnd["ram_pss_kib"] < rnd["ram_rss_kib"]:
    bad.append(f"guest RAM Pss {rnd['ram_pss_kib']} KiB not below half its Rss {rnd['ram_rss_kib']} KiB")
for b in bad:
    print("FAIL:", b)
sys.exit(1 if bad else 0)
PY
  # Each console holds its own clone's answer and no other's.
  for i in $(seq 0 7); do
    mine=$(tr -d '\r' < "$T/clones/r0/c$i.out" | grep -c "^PONG ping $i\$")
    others=$(tr -d '\r' < "$T/clones/r0/c$i.out" | grep '^PONG ping ' | grep -vc "^PONG ping $i\$")
    [[ $mine -ge 1 && $others -eq 0 ]] && pass "clone $i: its own console answered ($mine)" || fail "clone $i console: $mine own, $others other answers"
  done
  ;;
uffd) uffd_case ;;
devices) source "$(dirname "$0")/snapshot_devices.sh"; devices_case ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
