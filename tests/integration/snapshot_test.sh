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
#   uffd: the same guest, snapshotted, then loaded with mem_backend Uffd and its pages served
#         lazily by `ember uffd-handler` (after a 400 for a socket nobody listens on): the
#         counter goes on, the data's hash is unchanged, the console and the disk work, and
#         the handler copied some but not all of the guest's pages.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: snapshot_test.sh CASE}
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"

# wait_for KEY TIMEOUT_S: wait_line, with the console and log of a guest that never said KEY.
wait_for() { wait_line "$1" "$2" || { fail "no $1= line on the console"; give_up; }; }
ticks() { tr -d '\r' < "$T/$1.out" | sed -n 's/^TICK=\([0-9]*\)$/\1/p'; }
give_up() {
  echo "--- console and log:" >&2; tail -n 20 "$OUT" "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  finish
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
  for _ in $(seq 1 150); do [[ $(ticks b | wc -l) -ge 2 ]] && break; sleep 0.2; done
  first=$(ticks b | head -n 1)
  [[ -n $first && ( $first -eq $((N + 1)) || $first -eq $((N + 2)) ) ]] && pass "the counter went on: $N before, $first after" \
    || fail "counter after restore: $N before, '$first' after"
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
  expect_status "diff snapshot" 400 PUT /snapshot/create "{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"$T/d.snap\", \"mem_file_path\": \"$T/d.mem\"}"
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
  for _ in $(seq 1 150); do [[ $(ticks b | wc -l) -ge 2 ]] && break; sleep 0.2; done
  first=$(ticks b | head -n 1)
  [[ -n $first && ( $first -eq $((N + 1)) || $first -eq $((N + 2)) ) ]] && pass "the counter went on: $N before, $first after" \
    || fail "counter after restore: $N before, '$first' after"
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
uffd) uffd_case ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
