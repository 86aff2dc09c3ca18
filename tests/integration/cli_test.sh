#!/usr/bin/env bash
# Bad input to the ember binary: every case ends with one clear error line on stderr, a
# non-zero status, and no guest output. These fail before KVM is opened, so they run anywhere.
source "$(dirname "$0")/lib.sh"

# Stand-ins for a kernel and an initrd: every case below must fail before they are used as such.
head -c 4096 /dev/urandom > "$T/garbage"
printf '\x7fELF' > "$T/short.elf"
KERNEL=${EMBER_KERNEL_DIR:-}/vmlinux
[[ -f $KERNEL ]] || KERNEL=$T/garbage

# expect_error NAME "PATTERN" EMBER ARGS...
expect_error() {
  local name=$1 pattern=$2; shift 2
  run_ember "$name" "$@"
  local lines
  lines=$(wc -l < "$ERR")
  if [[ $RC -eq 0 || $RC -ge 124 && $RC -le 127 ]]; then fail "$name: status $RC"; return; fi
  if ! grep -q -E -- "$pattern" "$ERR"; then fail "$name: stderr lacks /$pattern/: $(cat "$ERR")"; return; fi
  if [[ $lines -ne 1 ]]; then fail "$name: $lines lines on stderr, expected one: $(cat "$ERR")"; return; fi
  if [[ -s $OUT ]]; then fail "$name: unexpected stdout: $(head -c 200 "$OUT")"; return; fi
  pass "$name: status $RC, $(cat "$ERR")"
}

cfg() { # NAME JSON
  printf '%s\n' "$2" > "$T/$1.json"
  echo "$T/$1.json"
}
bs() { echo "\"boot-source\": {\"kernel_image_path\": \"$1\"${2:+, \"initrd_path\": \"$2\"}}"; }
mc() { echo "\"machine-config\": {\"vcpu_count\": $1, \"mem_size_mib\": $2}"; }

expect_error no_config 'needs --config-file' --no-api
expect_error missing_config 'cannot read config file' --no-api --config-file "$T/nope.json"
expect_error bad_json 'not valid JSON' --no-api --config-file "$(cfg badjson '{"boot-source": ')"
# Unknown top-level keys are ignored, as Firecracker's VmmConfig does: the real error is the missing boot-source.
expect_error unknown_section 'missing required section "boot-source"' --no-api --config-file "$(cfg unk "{\"boot_source\": {}}")"
expect_error unknown_key 'unknown field "vcpus"' --no-api --config-file "$(cfg unkkey "{$(bs "$KERNEL"), \"machine-config\": {\"vcpus\": 1, \"vcpu_count\": 1, \"mem_size_mib\": 64}}")"
expect_error wrong_type 'vcpu_count must be a non-negative integer' --no-api --config-file "$(cfg wt "{$(bs "$KERNEL"), $(mc '"two"' 64)}")"
expect_error wrong_type_float 'vcpu_count must be a non-negative integer' --no-api --config-file "$(cfg wtf "{$(bs "$KERNEL"), $(mc 1.5 64)}")"
expect_error vcpus_zero 'vcpu_count must be from 1 to 32' --no-api --config-file "$(cfg v0 "{$(bs "$KERNEL"), $(mc 0 64)}")"
expect_error vcpus_33 'vcpu_count must be from 1 to 32' --no-api --config-file "$(cfg v33 "{$(bs "$KERNEL"), $(mc 33 64)}")"
expect_error mem_zero 'mem_size_mib must be at least 1' --no-api --config-file "$(cfg m0 "{$(bs "$KERNEL"), $(mc 1 0)}")"
expect_error mem_huge 'more than this host' --no-api --config-file "$(cfg mh "{$(bs "$KERNEL"), $(mc 1 100000000)}")"
expect_error no_kernel_field 'missing required field "kernel_image_path"' --no-api --config-file "$(cfg nk "{\"boot-source\": {}, $(mc 1 64)}")"
expect_error missing_kernel 'The kernel file cannot be opened: .*/nope: No such file' --no-api --config-file "$(cfg mk "{$(bs "$T/nope"), $(mc 1 64)}")"
expect_error kernel_is_dir 'is not a regular file' --no-api --config-file "$(cfg kd "{$(bs "$T"), $(mc 1 64)}")"
expect_error garbage_kernel 'neither an ELF vmlinux nor a bzImage' --no-api --config-file "$(cfg gk "{$(bs "$T/garbage"), $(mc 1 64)}")"
expect_error truncated_elf 'truncated' --no-api --config-file "$(cfg te "{$(bs "$T/short.elf"), $(mc 1 64)}")"
expect_error missing_initrd 'initrd .*/nope.img: No such file' --no-api --config-file "$(cfg mi "{$(bs "$KERNEL" "$T/nope.img"), $(mc 1 64)}")"
if [[ $KERNEL != "$T/garbage" ]]; then
  truncate -s 200M "$T/big.img"
  expect_error initrd_too_big 'initrd .* does not fit' --no-api --config-file "$(cfg ib "{$(bs "$KERNEL" "$T/big.img"), $(mc 1 128)}")"
  expect_error kernel_too_big_for_ram 'does not fit in guest RAM|more than guest RAM' --no-api --config-file "$(cfg kr "{$(bs "$KERNEL"), $(mc 1 8)}")"
else
  fail "EMBER_KERNEL_DIR not set: cannot test initrd and RAM-size errors against a real kernel"
fi
expect_error bad_level '--level must be one of' --no-api --level Loud --config-file "$(cfg lv "{$(bs "$KERNEL"), $(mc 1 64)}")"
expect_error bad_id '--id must be' --no-api --id 'bad id!' --config-file "$(cfg id "{$(bs "$KERNEL"), $(mc 1 64)}")"
expect_error unknown_flag '--frobnicate' --no-api --frobnicate
# API mode: socket problems and a bad --config-file are reported before serving.
expect_error api_sock_no_dir 'cannot listen on API socket' --api-sock "$T/no/such/dir/api.sock"
touch "$T/plain-file"
expect_error api_sock_not_socket 'exists and is not a socket' --api-sock "$T/plain-file"
expect_error api_bad_config 'missing required section "boot-source"' --api-sock "$T/cfg.sock" --config-file "$(cfg apibad '{"nope": 1}')"
[[ ! -e $T/cfg.sock ]] && pass "no socket left after a refused config" || fail "socket left after a refused config"
# A live socket is refused; a stale one (no listener) is replaced.
"$EMBER_BIN" --api-sock "$T/live.sock" 2> "$T/live.err" &
live_pid=$!
for _ in $(seq 1 50); do [[ -S $T/live.sock ]] && break; sleep 0.1; done
expect_error api_sock_live 'in use by a running process' --api-sock "$T/live.sock"
kill -9 "$live_pid"; wait "$live_pid" 2>/dev/null
[[ -S $T/live.sock ]] && pass "stale socket left by a killed Ember" || fail "expected a stale socket after SIGKILL"
"$EMBER_BIN" --api-sock "$T/live.sock" 2> "$T/stale.err" &
stale_pid=$!
ok=0
for _ in $(seq 1 50); do
  curl -s -m 2 --unix-socket "$T/live.sock" http://localhost/ | grep -q '"state":"Not started"' && { ok=1; break; }
  sleep 0.1
done
[[ $ok == 1 ]] && pass "a stale socket is replaced and served" || fail "stale socket not replaced: $(cat "$T/stale.err")"
kill -TERM "$stale_pid"; wait "$stale_pid"; rc=$?
expect_eq "SIGTERM before boot ends Ember with" "$rc" 0
[[ ! -e $T/live.sock ]] && pass "socket removed on exit" || fail "socket left after SIGTERM"

# Firecracker 1.16's flags. Clients spawn Ember as they spawn Firecracker: the Go SDK with
# `--api-sock S --id ID --no-seccomp`, the jailer adding `--start-time-us`, `--start-time-cpu-us`
# and `--parent-cpu-time-us`. Each must start the API, not be refused.
mono_us() { python3 -c 'import time; print(time.monotonic_ns() // 1000)'; }
# start_api NAME ARGS...: Ember serving $T/NAME.sock; sets API_PID and SOCK, stderr in $T/NAME.err.
start_api() {
  local name=$1; shift
  SOCK=$T/$name.sock
  "$EMBER_BIN" --api-sock "$SOCK" "$@" < /dev/null > "$T/$name.out" 2> "$T/$name.err" &
  API_PID=$!
  for _ in $(seq 1 100); do
    [[ $(api GET /) == 200 ]] && return 0
    kill -0 "$API_PID" 2>/dev/null || break
    sleep 0.05
  done
  fail "$name: the API did not come up with $*: $(cat "$T/$name.err")"
  return 1
}
# api METHOD PATH [BODY]: prints the status; the body is left in $T/body.
api() {
  curl -s -m 5 --unix-socket "$SOCK" -X "$1" "http://localhost$2" ${3:+-H 'Content-Type: application/json' -d "$3"} \
    -o "$T/body" -w '%{http_code}' 2>/dev/null
}
# stop_api NAME: SIGTERM; Ember must end with 0.
stop_api() {
  kill -TERM "$API_PID"; wait "$API_PID"; local rc=$?
  [[ $rc -eq 0 ]] || fail "$1: exit status $rc after SIGTERM: $(cat "$T/$1.err")"
}
# metric FILE GROUP NAME: the value in the last metrics line of FILE.
metric() { tail -n 1 "$1" | python3 -c "import json, sys; print(json.load(sys.stdin)['$2']['$3'])"; }

if start_api gosdk --id abc --no-seccomp; then
  grep -q '"id":"abc"' "$T/body" && pass "Go SDK flags (--api-sock --id --no-seccomp) serve the API" || fail "GET / after the Go SDK's flags: $(cat "$T/body")"
  stop_api gosdk
fi
echo '{}' > "$T/filter.json"
start=$(( $(mono_us) - 5000000 ))
if start_api jailer --id jailed-1 --seccomp-filter "$T/filter.json" --start-time-us "$start" --start-time-cpu-us 0 \
     --parent-cpu-time-us 7000000 --metrics-path "$T/jailer.metrics"; then
  # FlushMetrics is refused before boot, as in Firecracker; Ember writes a last line as it ends.
  expect_eq "FlushMetrics before boot (refused, as in Firecracker)" "$(api PUT /actions '{"action_type": "FlushMetrics"}')" 400
  grep -q 'not supported before starting the microVM' "$T/body" && pass "FlushMetrics before boot: Firecracker's message" || fail "FlushMetrics before boot: $(cat "$T/body")"
  stop_api jailer
  us=$(metric "$T/jailer.metrics" api_server process_startup_time_us)
  cpu=$(metric "$T/jailer.metrics" api_server process_startup_time_cpu_us)
  # Firecracker's reading: from the launcher's start (5 s ago) to the socket; CPU from 0 plus the parent's 7 s.
  (( us >= 5000000 && us < 35000000 )) && pass "--start-time-us: process_startup_time_us $us counts from 5 s ago" \
    || fail "--start-time-us 5 s ago: process_startup_time_us $us"
  (( cpu >= 7000000 && cpu < 37000000 )) && pass "--start-time-cpu-us 0 --parent-cpu-time-us 7 s: process_startup_time_cpu_us $cpu" \
    || fail "--parent-cpu-time-us 7 s: process_startup_time_cpu_us $cpu"
  grep -q 'seccomp filters yet' "$T/jailer.err" && pass "--seccomp-filter: warns that it is not applied" || fail "--seccomp-filter: no warning: $(cat "$T/jailer.err")"
fi
if start_api nostart --metrics-path "$T/nostart.metrics"; then
  stop_api nostart
  us=$(metric "$T/nostart.metrics" api_server process_startup_time_us)
  (( us < 5000000 )) && pass "without --start-time-us: Ember's own start-up time ($us us)" || fail "without --start-time-us: $us us"
fi
# The logging flags together; --module keeps lines from source files under that path.
if start_api logflags --id logs --log-path "$T/flags.log" --level INFO --module api/ --show-level --show-log-origin \
     --boot-timer --http-api-max-payload-size 100000; then
  api GET /machine-config > /dev/null
  stop_api logflags
  grep -q -E '^[0-9T:.-]+ \[logs:ember_vmm:INFO:api/main\.cpp:[0-9]+\] API: GET /machine-config -> 200$' "$T/flags.log" \
    && pass "--log-path --level --show-level --show-log-origin --module api/" || fail "log lines: $(cat "$T/flags.log")"
  grep -v -q -E ':INFO:api/' "$T/flags.log" && fail "--module api/ let other lines through: $(grep -v -E ':INFO:api/' "$T/flags.log")"
fi
if start_api module --log-path "$T/module.log" --level Info --module vmm/; then
  api GET / > /dev/null
  stop_api module
  grep -q 'API: GET' "$T/module.log" && fail "--module vmm/ kept a line from api/: $(cat "$T/module.log")" || pass "--module vmm/ drops lines from api/"
fi
# Firecracker's level names, in the letter cases it takes: a bad config file fails after them.
for l in Off OFF Error ERROR Warn WARN Warning WARNING Info INFO Debug DEBUG Trace TRACE; do
  run_ember "level_$l" --no-api --level "$l" --config-file "$T/badjson.json"
  if [[ $RC -eq 152 ]] && tail -n 1 "$ERR" | grep -q 'not valid JSON' && ! grep -q -- '--level' "$ERR"; then
    pass "--level $l"
  else
    fail "--level $l: status $RC, $(cat "$ERR")"
  fi
done
expect_eq "exit status for a bad --level (Firecracker's BadConfiguration)" "$(run_ember lv2 --level Loud; echo $RC)" 152
# Flags whose feature has not landed: one line naming what is missing, exit 153.
expect_unsupported() { # NAME PATTERN ARGS...
  local name=$1 pattern=$2 VM_TIMEOUT=10; shift 2 # an Ember that accepts the flag serves until then
  expect_error "$name" "$pattern" "$@"
  [[ $RC -eq 153 ]] || fail "$name: status $RC, expected 153"
  grep -q 'not expected' "$ERR" && fail "$name: refused as unknown"
}
expect_unsupported metadata '--metadata is not supported yet: Ember has no MMDS' --api-sock "$T/u.sock" --metadata "$T/filter.json"
expect_unsupported mmds_size_limit '--mmds-size-limit is not supported yet: Ember has no MMDS' --api-sock "$T/u.sock" --mmds-size-limit 4096
# Snapshot format versions, printed alone as Firecracker prints them.
run_ember snapshot_version --snapshot-version
[[ $RC -eq 0 && $(cat "$OUT") =~ ^v[0-9]+\.0\.0$ ]] && pass "--snapshot-version: $(cat "$OUT")" || fail "--snapshot-version: status $RC, $(cat "$OUT" "$ERR")"
printf 'not a snapshot file at all' > "$T/foreign.snap"
expect_error describe_snapshot_foreign 'foreign.snap: snapshot file: magic is wrong: this is not an Ember snapshot file' --describe-snapshot "$T/foreign.snap"
expect_error describe_snapshot_short 'filter.json: snapshot file: magic is cut short' --describe-snapshot "$T/filter.json"
expect_error describe_snapshot_missing "cannot open snapshot file $T/none.snap" --describe-snapshot "$T/none.snap"
expect_unsupported enable_pci '--enable-pci is not supported yet' --api-sock "$T/u.sock" --enable-pci
[[ ! -e $T/u.sock ]] && pass "no socket after a refused flag" || fail "socket left after a refused flag"
expect_unsupported seccomp_both '--seccomp-filter excludes --no-seccomp' --no-seccomp --seccomp-filter "$T/filter.json"
expect_unsupported start_time_negative '--start-time-us: expected a non-negative integer, not "-5"' --start-time-us -5
expect_unsupported start_time_text '--start-time-cpu-us: expected a non-negative integer' --start-time-cpu-us soon
expect_unsupported parent_cpu_huge '--parent-cpu-time-us: "99999999999999999999999" is out of range' --parent-cpu-time-us 99999999999999999999999
expect_error seccomp_filter_missing "--seccomp-filter $T/nope.json: No such file" --seccomp-filter "$T/nope.json"
expect_error metrics_path_bad 'Cannot initialize the metrics system: .*/no/dir/m: No such file' --api-sock "$T/m.sock" --metrics-path "$T/no/dir/m"

# Logger and metrics FIFOs nobody reads yet (firecracker-containerd, the Go SDK's FIFO options):
# accepted; what is written waits for the reader; a reader that leaves blocks nothing.
mkfifo "$T/log.fifo" "$T/metrics.fifo"
if start_api fifos --id fifos; then
  expect_eq "PUT /logger with a FIFO nobody reads" "$(api PUT /logger "{\"log_path\": \"$T/log.fifo\", \"level\": \"Info\"}")" 204
  expect_eq "PUT /metrics with a FIFO nobody reads" "$(api PUT /metrics "{\"metrics_path\": \"$T/metrics.fifo\"}")" 204
  # Ember keeps the FIFOs open (never EOF): read what is there for a moment.
  timeout 1 cat "$T/log.fifo" > "$T/fifo1.log"
  grep -q 'API: PUT /metrics -> 204' "$T/fifo1.log" && pass "log lines written before the reader came arrive" || fail "log FIFO: $(cat "$T/fifo1.log")"
  # The readers are gone; 3000 requests log ~250 KiB, several times the pipe's buffer.
  if timeout 60 python3 - "$SOCK" 3000 <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rb")
for _ in range(int(sys.argv[2])):
    s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert f.readline().split()[1] == b"200"
    length = 0
    while (h := f.readline()) not in (b"\r\n", b""):
        k, _, v = h.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    f.read(length)
PY
  then pass "3000 requests answered with nobody reading the log FIFO"; else fail "requests stalled with a full log FIFO"; fi
  expect_eq "GET / after the log FIFO filled" "$(api GET /)" 200
  # FlushMetrics is refused before boot (as in Firecracker), so the metrics line to read is the
  # one Ember writes as it ends, into the FIFO nobody reads. This shell holds the FIFO open
  # (without reading) so that the line outlives Ember's own descriptors.
  exec 7<> "$T/metrics.fifo"
  stop_api fifos
  timeout 1 cat <&7 > "$T/fifo2.metrics"
  exec 7<&-
  [[ $(metric "$T/fifo2.metrics" logger missed_metrics_count) == 0 ]] && pass "metrics line written with no reader arrives later" \
    || fail "metrics FIFO: $(cat "$T/fifo2.metrics")"
  missed=$(metric "$T/fifo2.metrics" logger missed_log_count)
  (( missed > 1000 )) && pass "lines dropped on the full log FIFO are counted (missed_log_count $missed)" \
    || fail "missed_log_count $missed after 3000 lines into a full FIFO"
fi

# Drives: every bad drive fails before KVM is opened, naming the drive.
head -c 1048576 /dev/zero > "$T/disk.img"
head -c 1000 /dev/zero > "$T/odd.img"
: > "$T/empty.img"
drv() { # ID PATH ROOT RO [EXTRA JSON]
  echo "{\"drive_id\": \"$1\", \"path_on_host\": \"$2\", \"is_root_device\": $3, \"is_read_only\": $4${5:+, $5}}"
}
dcfg() { cfg "$1" "{$(bs "$KERNEL"), $(mc 1 64), \"drives\": [$2]}"; }
expect_error drive_missing 'drive rootfs: .*/nope.img: No such file or directory' --no-api --config-file "$(dcfg dmiss "$(drv rootfs "$T/nope.img" true false)")"
# Not whole sectors: a warning, as in Firecracker, and the boot goes on (to the garbage kernel here).
run_ember drive_odd_size --no-api --config-file "$(cfg dodd "{$(bs "$T/garbage"), $(mc 1 64), \"drives\": [$(drv rootfs "$T/odd.img" true false)]}")"
if [[ $RC -eq 152 ]] && grep -q 'odd.img: disk size 1000 is not a multiple of sector size 512; the remainder will not be visible to the guest' "$ERR" \
   && tail -n 1 "$ERR" | grep -q 'neither an ELF vmlinux nor a bzImage'; then
  pass "drive of 1000 bytes: warned, not refused"
else
  fail "drive of 1000 bytes: status $RC, $(cat "$ERR")"
fi
# Empty: a 0-sector disk, as in Firecracker; the boot goes on (to the garbage kernel here).
run_ember drive_empty --no-api --config-file "$(cfg dempty "{$(bs "$T/garbage"), $(mc 1 64), \"drives\": [$(drv d "$T/empty.img" false false)]}")"
if [[ $RC -eq 152 ]] && ! grep -q 'empty.img' "$ERR" && tail -n 1 "$ERR" | grep -q 'neither an ELF vmlinux nor a bzImage'; then
  pass "empty drive: accepted as 0 sectors"
else
  fail "empty drive: status $RC, $(cat "$ERR")"
fi
expect_error drive_dir 'is not a regular file or block device' --no-api --config-file "$(dcfg ddir "$(drv d "$T" false true)")"
expect_error drive_two_roots 'A root block device already exists' --no-api --config-file "$(dcfg droots "$(drv a "$T/disk.img" true true), $(drv b "$T/disk.img" true true)")"
expect_error drive_same_file 'drives a and b are the same file, and at least one is writable' --no-api --config-file "$(dcfg dsame "$(drv a "$T/disk.img" false false), $(drv b "$T/disk.img" false true)")"
expect_error drive_dup_id 'drive id "a" is used twice' --no-api --config-file "$(dcfg ddup "$(drv a "$T/disk.img" false true), $(drv a "$T/disk.img" false true)")"
expect_error drive_bad_id 'must be 1-64 characters' --no-api --config-file "$(dcfg dbid "$(drv 'a-b' "$T/disk.img" false true)")"
expect_error drive_cache 'cache_type "Fast" is not Unsafe or Writeback' --no-api --config-file "$(dcfg dcache "$(drv a "$T/disk.img" false false '"cache_type": "Fast"')")"
expect_error drive_engine 'io_engine "Uring" is not Sync or Async' --no-api --config-file "$(dcfg deng "$(drv a "$T/disk.img" false false '"io_engine": "Uring"')")"
expect_error drive_socket 'vhost-user' --no-api --config-file "$(dcfg dsock "$(drv a "$T/disk.img" false false '"socket": "/tmp/x"')")"
expect_error drive_rate_limiter 'drive a.rate_limiter.bandwidth: missing required field "refill_time"' --no-api --config-file "$(dcfg drl "$(drv a "$T/disk.img" false false '"rate_limiter": {"bandwidth": {"size": 1}}')")"
expect_error drive_rate_limiter_field 'drive a.rate_limiter: unknown field "iops"' --no-api --config-file "$(dcfg drlf "$(drv a "$T/disk.img" false false '"rate_limiter": {"iops": null}')")"
expect_error drive_unknown_field 'unknown field "readonly"' --no-api --config-file "$(dcfg dunk "$(drv a "$T/disk.img" false false '"readonly": true')")"
net() { cfg "$1" "{$(bs "$KERNEL"), $(mc 1 64), \"network-interfaces\": [$2]}"; }
expect_error net_no_tap 'network interface eth0: TAP embernotap0: (no such TAP device|cannot open /dev/net/tun)' --no-api --config-file "$(net nonet '{"iface_id": "eth0", "host_dev_name": "embernotap0"}')"
expect_error net_bad_mac 'guest_mac "06:00:ac:10:00" is not a unicast MAC' --no-api --config-file "$(net nmac '{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00"}')"
expect_error net_same_tap 'host device name tap0 is already in use' --no-api --config-file "$(net ntap '{"iface_id": "a", "host_dev_name": "tap0"}, {"iface_id": "b", "host_dev_name": "tap0"}')"
expect_error net_mtu 'mtu must be from 68 to 65535' --no-api --config-file "$(net nmtu '{"iface_id": "a", "host_dev_name": "tap0", "mtu": 65536}')"
expect_error net_rate_limiter 'network interface a.tx_rate_limiter.ops.size must be a non-negative integer, not negative' --no-api --config-file "$(net nrl '{"iface_id": "a", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": -1, "refill_time": 100}}}')"
con() { cfg "$1" "{$(bs "$KERNEL"), $(mc 1 64), $2}"; }
expect_error console_bad_device 'console.device must be "serial" or "virtio", not "pci"' --no-api --config-file "$(con cdev '"console": {"device": "pci"}')"
expect_error console_unknown_field 'console: unknown field "speed"' --no-api --config-file "$(con cunk '"console": {"device": "virtio", "speed": 9600}')"
expect_error serial_rate_limiter 'serial.rate_limiter: unknown field "bandwidth"' --no-api --config-file "$(con srl "\"serial\": {\"serial_out_path\": \"$T/s.out\", \"rate_limiter\": {\"bandwidth\": {\"size\": 1, \"refill_time\": 1}}}")"
# A serial FIFO nobody reads yet is accepted (as the logger's and metrics'): the boot goes on to
# the kernel, which is garbage here.
mkfifo "$T/noreader.fifo"
expect_error serial_fifo_no_reader 'neither an ELF vmlinux nor a bzImage' --no-api --config-file "$(cfg sfifo "{$(bs "$T/garbage"), $(mc 1 64), \"serial\": {\"serial_out_path\": \"$T/noreader.fifo\"}}")"
expect_error serial_out_dir "serial_out_path $T: Is a directory" --no-api --config-file "$(con sdir "\"serial\": {\"serial_out_path\": \"$T\"}")"
chmod 444 "$T/disk.img"
if [[ $(id -u) -ne 0 ]]; then
  expect_error drive_no_write_permission 'drive a: .*disk.img: Permission denied' --no-api --config-file "$(dcfg dperm "$(drv a "$T/disk.img" false false)")"
fi
chmod 644 "$T/disk.img"

# Firecracker 1.16's config-file rules: every section of its GET /vm/config shape, null where
# absent, and keys it does not know (ignored, with a warning) get past parsing; the garbage
# kernel is the first error.
cfg fcshape "{
  \"boot-source\": {\"kernel_image_path\": \"$T/garbage\", \"boot_args\": \"console=ttyS0 reboot=k panic=1 pci=off\", \"initrd_path\": null},
  \"drives\": [{\"drive_id\": \"root\", \"path_on_host\": \"$T/disk.img\", \"is_root_device\": true, \"partuuid\": null,
               \"is_read_only\": true, \"cache_type\": \"Unsafe\", \"io_engine\": \"Sync\", \"rate_limiter\": null, \"socket\": null}],
  \"machine-config\": {\"vcpu_count\": 1, \"mem_size_mib\": 64, \"smt\": false, \"track_dirty_pages\": false, \"huge_pages\": \"None\"},
  \"cpu-config\": null, \"balloon\": null, \"network-interfaces\": [], \"vsock\": null, \"logger\": null, \"metrics\": null,
  \"mmds-config\": null, \"entropy\": null, \"pmem\": [], \"memory-hotplug\": null, \"mmds-version\": \"V2\"
}" > /dev/null
run_ember fcshape --no-api --config-file "$T/fcshape.json"
if [[ $RC -eq 152 ]] && tail -n 1 "$ERR" | grep -q 'neither an ELF vmlinux nor a bzImage' && grep -q 'ignoring unknown section "mmds-version"' "$ERR"; then
  pass "Firecracker-shaped config with null sections and an unknown key parses"
else
  fail "Firecracker-shaped config: status $RC, $(cat "$ERR")"
fi
# Sections for devices Ember does not have: one line naming the section, Firecracker's status for a bad config.
for sec in 'mmds-config|{"network_interfaces": ["eth0"]}|MMDS' \
           'pmem|[{"id": "p0", "path_on_host": "/tmp/p"}]|virtio-pmem device' 'memory-hotplug|{"total_size_mib": 1024}|memory hotplug'; do
  IFS='|' read -r name body what <<< "$sec"
  expect_error "section_$name" "config file section \"$name\" is not supported yet: Ember has no $what" --no-api \
    --config-file "$(cfg "sec_$name" "{$(bs "$KERNEL"), $(mc 1 64), \"$name\": $body}")"
  [[ $RC -eq 152 ]] || fail "section $name: status $RC, expected 152"
done
# "entropy" is a device Ember has: a bad body is refused by field, the section is not.
expect_error section_entropy_bad 'entropy: unknown field "bogus"' --no-api \
  --config-file "$(cfg sec_entropy_bad "{$(bs "$KERNEL"), $(mc 1 64), \"entropy\": {\"bogus\": 1}}")"
# "balloon" likewise (Firecracker's Balloon object, unknown fields denied).
expect_error section_balloon_bad 'balloon: unknown field "bogus"' --no-api \
  --config-file "$(cfg sec_balloon_bad "{$(bs "$KERNEL"), $(mc 1 64), \"balloon\": {\"amount_mib\": 0, \"deflate_on_oom\": false, \"bogus\": 1}}")"
expect_error section_balloon_amount 'balloon: missing required field "deflate_on_oom"' --no-api \
  --config-file "$(cfg sec_balloon_amount "{$(bs "$KERNEL"), $(mc 1 64), \"balloon\": {\"amount_mib\": 0}}")"
# The API before boot: GET /vm/config's full shape, PUT /boot-source checked on arrival.
if start_api vmconfig; then
  expect_eq "GET /vm/config before boot" "$(api GET /vm/config)" 200
  if python3 - "$T/body" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
keys = {"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics", "mmds-config",
        "network-interfaces", "vsock", "entropy", "pmem", "memory-hotplug"}
assert keys <= set(c), set(c)
assert all(c[k] is None for k in ("balloon", "cpu-config", "logger", "metrics", "mmds-config", "vsock", "entropy", "memory-hotplug")), c
assert c["boot-source"] == {"kernel_image_path": "", "initrd_path": None}, c["boot-source"]
assert c["machine-config"] == {"vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False, "huge_pages": "None"}, c
PY
  then pass "GET /vm/config has every key of Firecracker's FullVmConfiguration"; else fail "GET /vm/config: $(cat "$T/body")"; fi
  expect_eq "PUT /boot-source with a missing kernel" "$(api PUT /boot-source "{\"kernel_image_path\": \"$T/nope\"}")" 400
  grep -q "The kernel file cannot be opened: $T/nope: No such file" "$T/body" && pass "missing kernel refused at PUT time" || fail "PUT /boot-source: $(cat "$T/body")"
  expect_eq "PUT /boot-source with a missing initrd" "$(api PUT /boot-source "{\"kernel_image_path\": \"$T/garbage\", \"initrd_path\": \"$T/nope\"}")" 400
  expect_eq "PUT /boot-source with files that open" "$(api PUT /boot-source "{\"kernel_image_path\": \"$T/garbage\"}")" 204
  api GET /vm/config > /dev/null
  grep -q "\"kernel_image_path\":\"$T/garbage\"" "$T/body" && pass "GET /vm/config shows the boot source" || fail "GET /vm/config: $(cat "$T/body")"
  stop_api vmconfig
fi

# KVM missing: a mount namespace with an empty /dev hides /dev/kvm.
if command -v unshare >/dev/null && unshare --mount true 2>/dev/null; then
  timeout 30 unshare --mount sh -c 'mount -t tmpfs tmpfs /dev && exec "$@"' sh "$EMBER_BIN" --no-api \
    --config-file "$(cfg nokvm "{$(bs "$KERNEL"), $(mc 1 64)}")" > "$T/nokvm.out" 2> "$T/nokvm.err"
  RC=$?
  if [[ $KERNEL == "$T/garbage" ]]; then
    pass "no-KVM case needs a real kernel: skipped check (garbage kernel fails first)"
  elif [[ $RC -ne 0 ]] && grep -q 'cannot open /dev/kvm: No such file or directory.*scripts/nested-kvm' "$T/nokvm.err"; then
    pass "missing /dev/kvm: $(cat "$T/nokvm.err")"
  else
    fail "missing /dev/kvm: status $RC, $(cat "$T/nokvm.err")"
  fi
else
  fail "unshare --mount unavailable: cannot test the missing-/dev/kvm error"
fi
[[ $("$EMBER_BIN" --version) =~ ^Ember\ v[0-9]+\.[0-9]+\.[0-9]+$ ]] && pass "--version" || fail "--version"
"$EMBER_BIN" --help | grep -q -- '--config-file' && pass "--help lists --config-file" || fail "--help"
# `ember run`: every refusal before a VM exists is status 125 with one "ember:" line, and leaves
# no private directory behind.
run_refused() { # run_refused LABEL EXPECTED-TEXT ARGS...
  local label=$1 want=$2; shift 2
  mkdir -p "$T/runtmp"
  TMPDIR=$T/runtmp "$EMBER_BIN" run "$@" < /dev/null > "$T/run.out" 2> "$T/run.err"
  local rc=$? n
  n=$(ls -A "$T/runtmp" | wc -l)
  if [[ $rc -eq 125 && $(wc -l < "$T/run.err") -eq 1 && $(cat "$T/run.err") == *"$want"* && ! -s $T/run.out && $n -eq 0 ]]; then
    pass "ember run $label: 125, $(cat "$T/run.err")"
  else
    fail "ember run $label: status $rc, stderr '$(cat "$T/run.err")', stdout $(stat -c %s "$T/run.out") bytes, $n left in TMPDIR"
  fi
}
run_refused "without a command" "no command given"
run_refused "--cpus 0" "--cpus" --cpus 0 -- true
run_refused "missing kernel" "$T/nope" --kernel "$T/nope" --rootfs "$T/garbage" -- true
run_refused "missing root image" "$T/nope" --kernel "$T/garbage" --rootfs "$T/nope" -- true
run_refused "empty command name" "empty" --kernel "$T/garbage" --rootfs "$T/garbage" -- ''
run_refused "env entry without NAME" "NAME=value" --kernel "$T/garbage" --rootfs "$T/garbage" -e =x -- true
run_refused "--warm with --net" "--net" --warm --net tap9 --kernel "$T/garbage" --rootfs "$T/garbage" -- true
finish
