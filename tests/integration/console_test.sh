#!/usr/bin/env bash
# virtio-console (hvc0) on real KVM: `console_test.sh CASE`. The guest console is switched with
# Ember's "console" section; output goes to stdout or to Firecracker's serial_out_path.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: console_test.sh CASE}
HVC_ARGS=${BASE_ARGS/console=ttyS0/console=hvc0}

# hvc_config FILE "CMD" [KEY=JSON ...]: a config file booting the initrd with console=hvc0 and
# virtio-console, plus extra top-level sections (e.g. 'serial={"serial_out_path": "/x"}').
hvc_config() {
  local file=$1 cmd=$2; shift 2
  write_config "$file" "$K/vmlinux" 1 256 "$cmd"
  python3 - "$file" "$HVC_ARGS" "$@" <<'PY'
import json, sys
path, args, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
c = json.load(open(path))
c["boot-source"]["boot_args"] = c["boot-source"]["boot_args"].replace(c["boot-source"]["boot_args"].split(" -- ")[0], args, 1)
c["console"] = {"device": "virtio"}
for kv in extra:
    k, v = kv.split("=", 1)
    c[k] = json.loads(v)
if any(d.get("is_root_device") for d in c.get("drives", [])):
    del c["boot-source"]["initrd_path"]  # boot the root drive, not the initramfs
json.dump(c, open(path, "w"))
PY
}
# gen_lines N: N lines of exactly 1024 bytes, each starting with its number (the guest runs the
# same awk program from busybox). Long lines keep the test short: the tty layer hands hvc one
# buffer per line and one for its "\r\n", and each costs the guest a notification, an
# interrupt and two register accesses, which are slow under nested virtualisation.
GEN_AWK='BEGIN { for (i = 0; i < n; i++) { s = sprintf("%07d:", i); while (length(s) < 1023) s = s "abcdefghijklmnopqrstuvwxyz"; print substr(s, 1, 1023) } }'
gen_lines() { awk -v n="$1" "$GEN_AWK"; }
# root_with_script FILE "SCRIPT": a copy of the ext4 rootfs with SCRIPT as /t.sh.
root_with_script() {
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$1"
  printf '%s\n' "$2" > "$T/t.sh"
  debugfs -w -R "write $T/t.sh /t.sh" "$1" >/dev/null 2>&1 || { fail "debugfs write /t.sh"; finish; }
}
# metric GROUP NAME: the sum of a counter over every line of $T/metrics.json.
metric() {
  python3 - "$T/metrics.json" "$1" "$2" <<'PY'
import json, sys
print(sum(json.loads(l).get(sys.argv[2], {}).get(sys.argv[3], 0) for l in open(sys.argv[1]) if l.strip()))
PY
}

case $case_name in
hvc_boot)
  # /dev/console is hvc0: the guest's output and exit status come back through virtio-console.
  hvc_config "$T/vm.json" 'echo HVC=$(grep -c ^hvc0 /proc/consoles); echo TTY=$(cat /sys/class/tty/console/active); echo SIZE=$(stty size); exit 5' \
    "metrics={\"metrics_path\": \"$T/metrics.json\"}"
  run_ember boot --no-api --config-file "$T/vm.json"
  expect_eq "ember status" "$RC" 0
  expect_eq "hvc0 is a guest console" "$(guest_value HVC)" 1
  expect_eq "active console" "$(guest_value TTY)" hvc0
  expect_eq "guest exit status over hvc0" "$(guest_value EMBER_EXIT_STATUS)" 5
  # stdout is a file, so no F_SIZE: hvc0 has no size, and busybox's `stty size` then fails (as
  # on ttyS0). The size case checks the terminal's size arriving.
  expect_eq "no console size without a terminal" "$(guest_value SIZE)" ""
  tx=$(metric virtio_console tx_bytes_count)
  [[ $tx -ge $(wc -c < "$OUT") ]] && pass "virtio_console carried the console ($tx bytes)" || fail "virtio_console tx_bytes_count $tx < $(wc -c < "$OUT")"
  expect_eq "nothing dropped" "$(metric console_output bytes_dropped)" 0
  ;;
hvc_interactive)
  # No command: a shell on hvc0 reads host stdin through receiveq0.
  hvc_config "$T/ia.json" ''
  sed -i 's/ -- "/"/' "$T/ia.json"
  interactive_start ia "$T/ia.json"
  # Three long lines in one write, several receive buffers' worth (the host reads 256 bytes at
  # a time); busybox's line editing caps a line at 1024 bytes.
  long=$(seq -s- 1 250)
  printf 'echo LONG1=%s\necho LONG2=%s\necho LONG3=%s\n' "$long" "$long" "$long" >&3
  printf 'exit 3\n' >&3
  interactive_end
  for k in 1 2 3; do expect_eq "long input line $k arrived intact" "$(guest_value LONG$k)" "$long"; done
  expect_eq "shell exit status" "$(guest_value EMBER_EXIT_STATUS)" 3
  expect_eq "ember status" "$RC" 0
  ;;
output_10mib)
  # 10 MiB of guest output through a named pipe (serial_out_path) read by the host: every byte
  # arrives, in order. The test holds the FIFO open read-write so Ember finds a reader at start
  # and cat sees EOF only once the test closes it (no child may inherit that descriptor).
  n=10240
  root_with_script "$T/root.ext4" "echo BEGIN; awk -v n=$n '$GEN_AWK'; echo END"
  mkfifo "$T/out.fifo"
  exec 5<> "$T/out.fifo"
  cat "$T/out.fifo" > "$T/serial.out" 5>&- &
  catpid=$!
  # loglevel=1: kernel messages (e.g. "random: crng init done") would land inside the data.
  HVC_ARGS="$HVC_ARGS loglevel=1" hvc_config "$T/vm.json" "sh /t.sh" "serial={\"serial_out_path\": \"$T/out.fifo\"}" \
    "metrics={\"metrics_path\": \"$T/metrics.json\"}" \
    "drives=[{\"drive_id\": \"root\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}]"
  start=$(date +%s.%N)
  run_ember big --no-api --config-file "$T/vm.json" 5>&-
  end=$(date +%s.%N)
  exec 5>&-
  wait "$catpid"
  expect_eq "ember status" "$RC" 0
  [[ ! -s $OUT ]] && pass "nothing on stdout with serial_out_path" || fail "stdout got $(wc -c < "$OUT") bytes"
  tr -d '\r' < "$T/serial.out" | sed -n '/^BEGIN$/,/^END$/p' | sed '1d;$d' > "$T/got.txt"
  want=$(gen_lines "$n" | md5sum | cut -c1-32)
  got=$(md5sum < "$T/got.txt" | cut -c1-32)
  expect_eq "$(wc -c < "$T/got.txt") bytes of guest output, intact and in order" "$got" "$want"
  expect_eq "exit status after the output" "$(OUT=$T/serial.out guest_value EMBER_EXIT_STATUS)" 0
  expect_eq "nothing dropped" "$(metric console_output bytes_dropped)" 0
  echo "info: 10 MiB over hvc0 in $(awk "BEGIN{print $end - $start}") s, boot included ($(metric virtio_console tx_count) transmit chains)"
  ;;
stalled_host)
  # The host opens the output FIFO (read-write, not inherited by Ember) and never reads it. The guest writes 4 MiB to hvc0 and then
  # does other work (a marker written to a drive): the console's overflow is dropped and
  # counted, the guest is never stalled and reboots, and Ember exits.
  mkfifo "$T/out.fifo"
  exec 5<> "$T/out.fifo"
  head -c $((1024 * 1024)) /dev/zero > "$T/scratch.img"
  root_with_script "$T/root.ext4" "awk -v n=4096 '$GEN_AWK'
echo DONE-\$(seq 1 100 | md5sum | cut -c1-8) | dd of=/dev/vdb conv=fsync"
  hvc_config "$T/vm.json" 'sh /t.sh' \
    "serial={\"serial_out_path\": \"$T/out.fifo\"}" "metrics={\"metrics_path\": \"$T/metrics.json\"}" \
    "drives=[{\"drive_id\": \"root\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false},
             {\"drive_id\": \"scratch\", \"path_on_host\": \"$T/scratch.img\", \"is_root_device\": false, \"is_read_only\": false}]"
  run_ember stalled --no-api --config-file "$T/vm.json" 5>&-
  exec 5>&-
  expect_eq "ember status (the guest rebooted)" "$RC" 0
  want="DONE-$(seq 1 100 | md5sum | cut -c1-8)"
  expect_eq "the guest's other work completed" "$(head -c ${#want} "$T/scratch.img")" "$want"
  dropped=$(metric console_output bytes_dropped)
  [[ $dropped -gt $((2 * 1024 * 1024)) ]] && pass "console overflow dropped and counted ($dropped bytes)" || fail "bytes_dropped $dropped"
  written=$(metric console_output bytes_written)
  [[ $written -le $((64 * 1024 + 1024 * 1024 + 8192)) ]] && pass "at most pipe + buffer written ($written bytes)" || fail "bytes_written $written"
  ;;
size)
  # F_SIZE: Ember offers the size of the terminal on its stdout; the guest's hvc0 gets it.
  hvc_config "$T/vm.json" 'echo SIZE=$(stty size)'
  timeout -k "$KILL_AFTER" "$VM_TIMEOUT" script -qec "stty cols 132 rows 43; exec $EMBER_BIN --no-api --config-file $T/vm.json" /dev/null \
    < /dev/null > "$T/size.out" 2>&1
  RC=$?
  OUT=$T/size.out
  expect_eq "ember status" "$RC" 0
  expect_eq "guest hvc0 size (rows cols)" "$(guest_value SIZE)" "43 132"
  ;;
api)
  # PUT /serial and PUT /console through the API, their refusals, and GET /vm/config.
  SOCK=$T/api.sock
  api() { curl -s -m 20 --unix-socket "$SOCK" -X "$1" -H 'Content-Type: application/json' -d "$3" -w ' %{http_code}' "http://localhost$2"; }
  expect_status() { local name=$1 want=$2; shift 2; LAST=$(api "$@"); [[ ${LAST##* } == "$want" ]] && pass "$name -> $want" || fail "$name: wanted $want, got '$LAST'"; }
  "$EMBER_BIN" --api-sock "$SOCK" --level Info < /dev/null > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  for _ in $(seq 1 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
  expect_status "PUT /console bad device" 400 PUT /console '{"device": "pci"}'
  [[ $LAST == *'or \"virtio\"'* ]] && pass "bad device explained" || fail "bad device: $LAST"
  expect_status "PUT /console unknown field" 400 PUT /console '{"device": "virtio", "speed": 1}'
  # Firecracker 1.16's serial rate_limiter is a bare TokenBucket, not a RateLimiter.
  expect_status "PUT /serial RateLimiter shape" 400 PUT /serial "{\"serial_out_path\": \"$T/s.out\", \"rate_limiter\": {\"bandwidth\": {\"size\": 1, \"refill_time\": 1}}}"
  expect_status "PUT /serial empty path" 400 PUT /serial '{"serial_out_path": ""}'
  expect_status "GET /serial" 400 GET /serial ''
  expect_status "PUT /console" 204 PUT /console '{"device": "virtio"}'
  expect_status "PUT /serial" 204 PUT /serial "{\"serial_out_path\": \"$T/s.out\"}"
  expect_status "PUT /boot-source" 204 PUT /boot-source \
    "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$HVC_ARGS -- echo VIA=hvc; sleep 2\"}"
  expect_status "GET /vm/config" 200 GET /vm/config ''
  [[ $LAST == *'"console":{"device":"virtio"}'* && $LAST == *"\"serial_out_path\":\"$T/s.out\""* ]] && pass "vm/config shows console and serial" || fail "vm/config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  expect_status "PUT /serial after start" 400 PUT /serial "{\"serial_out_path\": \"$T/t.out\"}"
  expect_status "PUT /console after start" 400 PUT /console '{"device": "serial"}'
  for _ in $(seq 1 600); do kill -0 "$EMBER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$EMBER_PID" 2>/dev/null && { kill -9 "$EMBER_PID"; fail "Ember did not exit"; }
  wait "$EMBER_PID"; RC=$?
  expect_eq "ember status" "$RC" 0
  OUT=$T/s.out
  expect_eq "guest output in serial_out_path" "$(guest_value VIA)" hvc
  [[ ! -s $T/console.out ]] && pass "stdout left empty" || fail "stdout: $(head -c 200 "$T/console.out")"
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
