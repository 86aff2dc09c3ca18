#!/usr/bin/env bash
# Replays of the call sequences that Firecracker's real clients send, with curl against a real
# guest: `replay_test.sh CASE`. Each case spawns Ember exactly as the client spawns Firecracker
# (flags, working directory, FIFOs) and sends the client's requests in its order, with its
# headers and its JSON bodies byte for byte (key order and omitted fields as the client's
# marshaller produces them). Sources:
#   go_sdk_start       firecracker-go-sdk Machine.Start() (machine.go, handlers.go, drives.go,
#                      kernelargs.go, client.go; go-openapi runtime client/request.go)
#   go_sdk_vsock       Machine.Start() with firecracker-containerd's vsock device (agent_api),
#                      then vsock.DialContext to the agent port (vsock/dial.go) and data echoed
#   containerd_create  firecracker-containerd runtime/service.go createVM, drive_handler.go
#                      (stub drives, PATCH after boot), helpers.go, internal/cpu_template.go
#   getting_started    Firecracker docs/getting-started.md ("Starting Firecracker")
#   patch_block_doc    Firecracker docs/api_requests/patch-block.md
#   patch_net_doc      Firecracker docs/api_requests/patch-network-interface.md
# Everything runs in a network namespace of its own (unshare --net), as net_test.sh does.
if [[ -z ${EMBER_IN_NETNS:-} ]]; then
  exec env EMBER_IN_NETNS=1 unshare --net bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: replay_test.sh CASE}
ip link set lo up
SOCK=$T/firecracker.socket
# The Go SDK gives every request a 500 ms deadline (client.go defaultFirecrackerRequestTimeout,
# env FIRECRACKER_GO_SDK_REQUEST_TIMEOUT_MILLISECONDS) and waits 3 s for the socket to answer
# (machine.go defaultFirecrackerInitTimeoutSeconds; env FIRECRACKER_GO_SDK_INIT_TIMEOUT_SECONDS).
# Inside the nested L1 (EMBER_IN_L1, set by scripts/nested-kvm) everything runs under TCG, where
# InstanceStart alone takes 0.3 to 1.5 s, so both deadlines are raised there as an SDK user would
# raise them with those variables; each request's duration is printed either way.
if [[ -n ${EMBER_IN_L1:-} ]]; then SDK_TIMEOUT_S=5 SDK_INIT_TIMEOUT_S=10; else SDK_TIMEOUT_S=0.5 SDK_INIT_TIMEOUT_S=3; fi
SDK_TIMEOUT_S=${EMBER_REPLAY_SDK_TIMEOUT_S:-$SDK_TIMEOUT_S}

# sdk METHOD PATH [BODY]: a request as the Go SDK's HTTP client sends it. go-openapi builds the
# body with encoding/json's Encoder (one trailing newline) into a buffer, so Content-Length is
# set; GETs carry no Content-Type. Sets CODE, BODY (the response) and SECS (its duration).
sdk() {
  local m=$1 p=$2 b=${3:-} out
  local -a args=(-s -m "$SDK_TIMEOUT_S" --unix-socket "$SOCK" -X "$m" -H 'User-Agent: Go-http-client/1.1'
                 -H 'Accept: application/json' -H 'Accept-Encoding: gzip' -w '\n%{http_code} %{time_total}')
  [[ -n $b ]] && args+=(-H 'Content-Type: application/json' --data-binary "$b"$'\n')
  out=$(curl "${args[@]}" "http://localhost$p")
  BODY=$(sed '$d' <<< "$out"); read -r CODE SECS <<< "$(tail -n 1 <<< "$out")"
}
# expect NAME WANT: checks CODE after a request.
expect() {
  if [[ $CODE == "$2" ]]; then pass "$1 -> $2 (${SECS:-?} s)"; else fail "$1: wanted $2, got $CODE ${BODY:0:300}"; fi
}
sdk_expect() { # NAME WANT METHOD PATH [BODY]
  local name=$1 want=$2; shift 2
  sdk "$@"; expect "$name" "$want"
}
# doc METHOD PATH CURL-ARGS...: a request as Firecracker's docs write it (plain curl, no -H
# unless the doc has one: `--data` then sends Content-Type: application/x-www-form-urlencoded).
doc() {
  local m=$1 p=$2 out; shift 2
  out=$(curl -s -m 20 -X "$m" --unix-socket "$SOCK" "$@" -w '\n%{http_code} %{time_total}' "http://localhost$p")
  BODY=$(sed '$d' <<< "$out"); read -r CODE SECS <<< "$(tail -n 1 <<< "$out")"
}
doc_expect() { local name=$1 want=$2; shift 2; doc "$@"; expect "$name" "$want"; }

# model_check MODEL [PY-ASSERTS]: BODY parses as the SDK's swagger model (client/models/*.go,
# Firecracker's swagger for 1.16): every key the model declares has the model's JSON type or
# null (encoding/json refuses anything else), and the keys the model marks required are
# present. PY-ASSERTS (Python, with the parsed body as `j`) then check the values.
model_check() {
  local model=$1 asserts=${2:-}
  python3 - "$model" "$asserts" "$BODY" <<'PY' && pass "$model: SDK model parses${2:+, values as sent}" || fail "$model does not parse as the SDK's model: ${BODY:0:600}"
import json, sys
model, asserts, body = sys.argv[1], sys.argv[2], sys.argv[3]
S, I, B = "string", "integer", "boolean"
M = {  # model: {key: (type, required)}
  "InstanceInfo": {"app_name": (S, 1), "id": (S, 1), "state": (S, 1), "vmm_version": (S, 1)},
  "FirecrackerVersion": {"firecracker_version": (S, 1)},
  "MachineConfiguration": {"cpu_template": (S, 0), "mem_size_mib": (I, 1), "smt": (B, 0),
                           "track_dirty_pages": (B, 0), "vcpu_count": (I, 1), "huge_pages": (S, 0)},
  "BootSource": {"kernel_image_path": (S, 1), "boot_args": (S, 0), "initrd_path": (S, 0)},
  "TokenBucket": {"size": (I, 1), "refill_time": (I, 1), "one_time_burst": (I, 0)},
  "RateLimiter": {"bandwidth": ("TokenBucket", 0), "ops": ("TokenBucket", 0)},
  "Drive": {"drive_id": (S, 1), "is_root_device": (B, 1), "is_read_only": (B, 0), "path_on_host": (S, 0),
            "partuuid": (S, 0), "cache_type": (S, 0), "io_engine": (S, 0), "rate_limiter": ("RateLimiter", 0),
            "socket": (S, 0)},
  "NetworkInterface": {"iface_id": (S, 1), "host_dev_name": (S, 1), "guest_mac": (S, 0),
                       "rx_rate_limiter": ("RateLimiter", 0), "tx_rate_limiter": ("RateLimiter", 0)},
  "Logger": {"log_path": (S, 0), "level": (S, 0), "show_level": (B, 0), "show_log_origin": (B, 0), "module": (S, 0)},
  "Metrics": {"metrics_path": (S, 1)},
  "FullVmConfiguration": {"boot-source": ("BootSource", 0), "drives": (["Drive"], 0),
                          "machine-config": ("MachineConfiguration", 0), "logger": ("Logger", 0),
                          "metrics": ("Metrics", 0), "network-interfaces": (["NetworkInterface"], 0),
                          "balloon": ("object", 0), "vsock": ("object", 0), "mmds-config": ("object", 0)},
}
def check(v, t, where):
    if v is None: return
    if isinstance(t, list):
        assert isinstance(v, list), f"{where}: not an array"
        for i, e in enumerate(v): check(e, t[0], f"{where}[{i}]")
    elif t == S: assert isinstance(v, str), f"{where}: not a string"
    elif t == I: assert isinstance(v, int) and not isinstance(v, bool), f"{where}: not an integer"
    elif t == B: assert isinstance(v, bool), f"{where}: not a boolean"
    elif t == "object": assert isinstance(v, dict), f"{where}: not an object"
    else:
        assert isinstance(v, dict), f"{where}: not an object"
        for k, (kt, req) in M[t].items():
            assert not req or k in v, f"{where}: required key {k} missing"
            check(v.get(k), kt, f"{where}.{k}")
j = json.loads(body)
check(j, model, model)
exec(asserts)
PY
}

# Fixtures. $T is on /tmp, which inside the nested L1 is tmpfs: sockets and FIFOs work there.
put_script() { # IMAGE SCRIPT: stores SCRIPT as /t.sh in the ext4 IMAGE
  printf '%s\n' "$2" > "$T/t.sh"
  debugfs -w -R "write $T/t.sh /t.sh" "$1" >/dev/null 2>&1 || { fail "debugfs write /t.sh"; finish; }
}
make_tap() { # NAME ADDR/PREFIX
  ip tuntap add dev "$1" mode tap || { fail "ip tuntap add $1"; finish; }
  ip addr add "$2" dev "$1"
  ip link set "$1" up
}
# spawn ARGS...: Ember started as the client starts Firecracker, in the current directory, with
# the console on $T/console.out. EMBER_PID is the process.
spawn() {
  "$EMBER_BIN" "$@" < "${SPAWN_STDIN:-/dev/null}" > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  OUT=$T/console.out
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# sdk_wait_socket: machine.go waitForSocket: every 10 ms, stat the socket and, once it exists,
# GET /machine-config; give up after the init timeout.
sdk_wait_socket() {
  local t0; t0=$(now_ms)
  while (( $(now_ms) - t0 < SDK_INIT_TIMEOUT_S * 1000 )); do
    if [[ -S $SOCK ]]; then
      sdk GET /machine-config
      [[ $CODE == 200 ]] && { pass "socket answered GET /machine-config $(( $(now_ms) - t0 )) ms after spawn"; return 0; }
    fi
    kill -0 "$EMBER_PID" 2>/dev/null || break
    sleep 0.01
  done
  fail "no answer on the API socket within ${SDK_INIT_TIMEOUT_S} s of spawn"; give_up
}
give_up() {
  echo "--- console (tail):" >&2; tail -n 30 "$T/console.out" >&2
  echo "--- ember stderr (tail):" >&2; tail -n 20 "$T/ember.err" >&2
  kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null
  finish
}
# fifo_reader FIFO OUT: a reader that copies FIFO to OUT until the writer closes it.
fifo_reader() { cat "$1" > "$2" & }
# check_log_lines FILE ID ORIGIN(0|1): every line is in Firecracker's format
# `<RFC 3339 time, ns> [<id>:<thread>:<LEVEL>[:<file>:<line>]] <message>`.
check_log_lines() {
  python3 - "$@" <<'PY' && pass "log FIFO/file: $(wc -l < "$1") lines in Firecracker's format (id $2)" || fail "log lines: $(head -c 600 "$1")"
import re, sys
path, ident, origin = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
lines = [l for l in open(path, errors="replace").read().splitlines() if l]
assert len(lines) >= 3, f"only {len(lines)} lines"
tail = r":[^:\]\s]+:\d+" if origin else ""
pat = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[" + re.escape(ident) +
                 r":[^:\]]+:(TRACE|DEBUG|INFO|WARN|ERROR)" + tail + r"\] \S")
bad = [l for l in lines if not pat.match(l)]
assert not bad, f"{len(bad)} lines not in the format, e.g. {bad[0]!r}"
PY
}
# check_metrics FILE PY-ASSERTS: every line is one JSON object with Firecracker's groups;
# `lines` is the list of parsed lines, tot(group, key) sums a counter over them.
check_metrics() {
  python3 - "$@" <<'PY' && pass "metrics FIFO: JSON lines with Firecracker's groups${2:+, counters as expected}" || fail "metrics: $(tail -c 800 "$1")"
import json, sys
raw = [l for l in open(sys.argv[1]).read().splitlines() if l.strip()]
assert raw, "no metrics line"
lines = [json.loads(l) for l in raw]
for l in lines:
    assert isinstance(l.get("utc_timestamp_ms"), int), "utc_timestamp_ms"
    for g in ("api_server", "block", "get_api_requests", "put_api_requests", "patch_api_requests",
              "latencies_us", "logger", "net", "uart", "vcpu", "vmm"):
        assert isinstance(l.get(g), dict), f"group {g} missing"
tot = lambda g, k: sum(l.get(g, {}).get(k, 0) for l in lines)
exec(sys.argv[2] if len(sys.argv) > 2 else "")
PY
}

case $case_name in
go_sdk_start)
  # Machine.Start() with the default handlers, a Config with LogFifo, MetricsFifo, LogLevel
  # "Debug", MachineCfg {VcpuCount 1, MemSizeMib 256, Smt false, TrackDirtyPages true}, drives
  # from NewDrivesBuilder(root).AddDrive(data, true) (ids "0", then "root_drive": Build() puts
  # the root drive last), one static network interface (iface_id "1": createNetworkInterfaces
  # numbers them from 1) and Seccomp disabled. Then DescribeInstanceInfo, GetFirecrackerVersion,
  # the full config, a metrics flush, and Shutdown() (SendCtrlAltDel) followed by Wait().
  VMID=5b2e7c1a-93f4-4d1e-9a53-0c6f1e2d8b47
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
  head -c $((2 * 1024 * 1024)) /dev/urandom > "$T/data.img"
  make_tap tap0 172.16.0.1/24
  put_script "$T/root.ext4" 'echo ROOT_ARG=$(grep -o "root=[^ ]*" /proc/cmdline)
echo ROOT_MOUNT_RW=$(grep -c "^/dev/root / ext4 rw" /proc/mounts)
echo ROOT_RW=$(touch /rw-check && echo 1 || echo 0)
echo DATA_RO=$(cat /sys/block/vdb/ro)
echo DATA_MD5=$(md5sum /dev/vdb | cut -c1-32)
ip link set eth0 up
ip addr add 172.16.0.2/24 dev eth0
echo MAC=$(cat /sys/class/net/eth0/address)
ping -c 3 -W 5 172.16.0.1 >/dev/null && echo PING_HOST=ok || echo PING_HOST=fail
echo READY=1
sleep 600'
  # Spawn: configureBuilder: the binary, --api-sock (WithSocketPath), --id VMID, then
  # seccompArgs: --no-seccomp when Seccomp.Enabled is false (the default).
  spawn --api-sock "$SOCK" --id "$VMID" --no-seccomp
  sdk_wait_socket
  # CreateLogFilesHandler: mkfifo the metrics FIFO, then the log FIFO (0700); FifoLogWriter
  # starts copying the log FIFO. Nobody reads the metrics FIFO yet.
  mkfifo -m 0700 "$T/metrics.fifo" "$T/log.fifo"
  fifo_reader "$T/log.fifo" "$T/log.out"
  # BootstrapLoggingHandler: setupLogging (show_level true, show_log_origin false), setupMetrics.
  sdk_expect "PUT /logger" 204 PUT /logger "{\"level\":\"Debug\",\"log_path\":\"$T/log.fifo\",\"show_level\":true,\"show_log_origin\":false}"
  sdk_expect "PUT /metrics" 204 PUT /metrics "{\"metrics_path\":\"$T/metrics.fifo\"}"
  # CreateMachineHandler: PutMachineConfiguration, then refreshMachineConfiguration.
  sdk_expect "PUT /machine-config" 204 PUT /machine-config '{"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"vcpu_count":1}'
  sdk_expect "GET /machine-config" 200 GET /machine-config
  model_check MachineConfiguration 'assert (j["vcpu_count"], j["mem_size_mib"], j["smt"], j["track_dirty_pages"]) == (1, 256, False, True), j'
  # CreateBootSourceHandler: KernelArgs after setupKernelArgs (parseKernelArgs + String():
  # key=value pairs in map order, then init=... with everything after "--").
  ARGS="i8042.dumbkbd i8042.nopnp reboot=k pci=off console=ttyS0 loglevel=4 panic=-1 i8042.noaux i8042.nomux init=/init -- sh /t.sh"
  sdk_expect "PUT /boot-source" 204 PUT /boot-source "{\"boot_args\":\"$ARGS\",\"kernel_image_path\":\"$K/vmlinux\"}"
  # AttachDrivesHandler: models.Drive, keys in struct order, partuuid "" omitted.
  sdk_expect "PUT /drives/0" 204 PUT /drives/0 "{\"drive_id\":\"0\",\"is_read_only\":true,\"is_root_device\":false,\"path_on_host\":\"$T/data.img\"}"
  sdk_expect "PUT /drives/root_drive" 204 PUT /drives/root_drive "{\"drive_id\":\"root_drive\",\"is_read_only\":false,\"is_root_device\":true,\"path_on_host\":\"$T/root.ext4\"}"
  # CreateNetworkInterfacesHandler.
  sdk_expect "PUT /network-interfaces/1" 204 PUT /network-interfaces/1 '{"guest_mac":"06:00:ac:10:00:02","host_dev_name":"tap0","iface_id":"1"}'
  # AddVsocksHandler and ConfigMmdsHandler send nothing without vsock devices or AllowMMDS.
  sdk_expect "InstanceStart" 204 PUT /actions '{"action_type":"InstanceStart"}'
  wait_line READY 180 || { fail "guest never got ready"; give_up; }
  expect_eq "root=/dev/vda on the kernel command line (root_drive first)" "$(guest_value ROOT_ARG)" root=/dev/vda
  expect_eq "root mounted rw" "$(guest_value ROOT_MOUNT_RW)" 1
  expect_eq "root writable" "$(guest_value ROOT_RW)" 1
  expect_eq "drive 0 read-only in the guest" "$(guest_value DATA_RO)" 1
  expect_eq "drive 0 data" "$(guest_value DATA_MD5)" "$(md5sum < "$T/data.img" | cut -c1-32)"
  expect_eq "guest MAC" "$(guest_value MAC)" 06:00:ac:10:00:02
  expect_eq "guest pings the host over iface 1" "$(guest_value PING_HOST)" ok
  busybox ping -c 2 -W 5 172.16.0.2 >/dev/null && pass "host pings the guest" || fail "host cannot ping the guest"
  # After Start(): what SDK users call next.
  sdk_expect "GET / (DescribeInstanceInfo)" 200 GET /
  model_check InstanceInfo "assert j['state'] == 'Running' and j['id'] == '$VMID', j"
  sdk_expect "GET /version (GetFirecrackerVersion)" 200 GET /version
  model_check FirecrackerVersion 'assert j["firecracker_version"], j'
  sdk_expect "GET /vm/config" 200 GET /vm/config
  model_check FullVmConfiguration "
d = {x['drive_id']: x for x in j['drives']}
assert set(d) == {'0', 'root_drive'}, d
assert d['0']['is_read_only'] is True and d['root_drive']['is_root_device'] is True, d
assert d['0']['path_on_host'] == '$T/data.img', d
assert [n['iface_id'] for n in j['network-interfaces']] == ['1'], j['network-interfaces']
assert j['network-interfaces'][0]['host_dev_name'] == 'tap0' and j['network-interfaces'][0]['guest_mac'] == '06:00:ac:10:00:02'
assert j['boot-source']['boot_args'] == '$ARGS', j['boot-source']
mc = j['machine-config']; assert (mc['vcpu_count'], mc['mem_size_mib'], mc['track_dirty_pages']) == (1, 256, True), mc
assert j.get('logger') is None or j['logger'].get('log_path') == '$T/log.fifo', j.get('logger')
assert j.get('metrics') is None or j['metrics']['metrics_path'] == '$T/metrics.fifo', j.get('metrics')"
  # The user's metrics reader comes late; a flush then reaches it.
  fifo_reader "$T/metrics.fifo" "$T/metrics.out"
  sleep 0.5
  sdk_expect "FlushMetrics" 204 PUT /actions '{"action_type":"FlushMetrics"}'
  # Shutdown(): SendCtrlAltDel; Wait() until the process ends.
  sdk_expect "SendCtrlAltDel (Shutdown)" 204 PUT /actions '{"action_type":"SendCtrlAltDel"}'
  wait_exit 120
  expect_eq "Ember status after Shutdown()" "$RC" 0
  wait
  check_log_lines "$T/log.out" "$VMID" 0
  grep -q 'PUT /actions' "$T/log.out" && pass "log FIFO saw the API calls" || fail "log FIFO: no PUT /actions line"
  check_metrics "$T/metrics.out" '
assert tot("put_api_requests", "drive_count") >= 2, tot("put_api_requests", "drive_count")
assert tot("put_api_requests", "network_count") >= 1, tot("put_api_requests", "network_count")
assert tot("block_0", "read_bytes") >= 2 * 1024 * 1024, tot("block_0", "read_bytes")
assert tot("net_1", "tx_packets_count") > 0, tot("net_1", "tx_packets_count")'
  ;;
go_sdk_vsock)
  # Machine.Start() with Config.VsockDevices = [{ID: "agent_api", Path: "firecracker.vsock",
  # CID: 3}]: firecracker-containerd's vsock id and relative path (CreateVM: relVSockPath,
  # relative to the VMM's working directory) and its agent's port (defaultVsockPort 10789).
  # AddVsocksHandler runs after CreateNetworkInterfacesHandler and sends PUT /vsock with
  # models.Vsock {guest_cid, uds_path, vsock_id} in that key order. After Start(), the client
  # dials the agent as vsock.DialContext does (vsock/dial.go): every RetryInterval (100 ms)
  # connect (DialTimeout 100 ms; a failed connect is not retried), write "CONNECT 10789\n"
  # (ConnectMsgTimeout 100 ms), read a line within AckMsgTimeout (1 s) and retry while it is not
  # "OK <port>", up to RetryTimeout (20 s). In L1 the ack and retry timeouts are raised as the
  # replay raises the SDK's request timeouts (WithAckMsgTimeout, WithRetryTimeout).
  VMID=9d0c5a3e-1f2b-4c6d-8e7f-a1b2c3d4e5f6
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
  gcc -static -O2 -Wall -Wextra -Werror -o "$T/vsock_echo" "$(dirname "$0")/guest/vsock_echo.c" || { fail "cannot build vsock_echo.c"; finish; }
  { debugfs -w -R "write $T/vsock_echo /vsock_echo" "$T/root.ext4" && debugfs -w -R "sif /vsock_echo mode 0100755" "$T/root.ext4"; } >/dev/null 2>&1 \
    || { fail "debugfs write /vsock_echo"; finish; }
  # The agent starts listening a while after boot: the first dials end without "OK" (the guest
  # refuses the port, or the driver is not up yet) and the client retries.
  put_script "$T/root.ext4" 'sleep 8
/vsock_echo listen 10789 &
echo READY=1
sleep 600'
  cd "$T" || exit 2
  spawn --api-sock "$SOCK" --id "$VMID" --no-seccomp
  sdk_wait_socket
  sdk_expect "PUT /machine-config" 204 PUT /machine-config '{"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"vcpu_count":1}'
  sdk_expect "GET /machine-config" 200 GET /machine-config
  ARGS="i8042.dumbkbd i8042.nopnp reboot=k pci=off console=ttyS0 loglevel=4 panic=-1 i8042.noaux i8042.nomux init=/init -- sh /t.sh"
  sdk_expect "PUT /boot-source" 204 PUT /boot-source "{\"boot_args\":\"$ARGS\",\"kernel_image_path\":\"$K/vmlinux\"}"
  sdk_expect "PUT /drives/root_drive" 204 PUT /drives/root_drive "{\"drive_id\":\"root_drive\",\"is_read_only\":false,\"is_root_device\":true,\"path_on_host\":\"$T/root.ext4\"}"
  # AddVsocksHandler: the socket exists when the call returns (Firecracker binds in insert()).
  sdk_expect "PUT /vsock" 204 PUT /vsock '{"guest_cid":3,"uds_path":"firecracker.vsock","vsock_id":"agent_api"}'
  [[ -S $T/firecracker.vsock ]] && pass "PUT /vsock bound ./firecracker.vsock in Ember's working directory" || fail "no socket at $T/firecracker.vsock after PUT /vsock"
  # A second PUT with a path that is taken is refused, naming it; the first stays configured.
  : > "$T/taken.vsock"
  sdk PUT /vsock '{"guest_cid":3,"uds_path":"taken.vsock","vsock_id":"agent_api"}'
  expect "PUT /vsock on an existing file" 400
  grep -q 'taken.vsock' <<< "$BODY" && pass "fault_message names the path" || fail "fault_message: $BODY"
  sdk_expect "PUT /vsock again (agent_api)" 204 PUT /vsock '{"guest_cid":3,"uds_path":"firecracker.vsock","vsock_id":"agent_api"}'
  sdk_expect "InstanceStart" 204 PUT /actions '{"action_type":"InstanceStart"}'
  if [[ -n ${EMBER_IN_L1:-} ]]; then ACK_S=5 RETRY_S=180; else ACK_S=1 RETRY_S=20; fi
  timeout $((RETRY_S + 60)) python3 - "$T/firecracker.vsock" 10789 "$ACK_S" "$RETRY_S" > "$T/dial.out" 2>&1 <<'PY'
import hashlib, os, socket, sys, threading, time
uds, port, ack_s, retry_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
t0 = time.time(); attempts = 0; conn = None; why = []
while conn is None and time.time() - t0 < retry_s:
    time.sleep(0.1)
    attempts += 1
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(0.1)
    try:
        s.connect(uds)
    except OSError as e:  # not temporary for the SDK: Dial fails
        print("DIAL=connect failed: %s" % e); sys.exit(0)
    s.settimeout(0.1); s.sendall(b"CONNECT %d\n" % port)
    s.settimeout(ack_s); line = b""
    try:
        while not line.endswith(b"\n"):
            b = s.recv(32)
            if not b: break
            line += b
    except socket.timeout:
        pass
    if line.startswith(b"OK ") and line.endswith(b"\n"):
        conn = s
    else:
        why.append(line.decode(errors="replace") or "EOF/timeout"); s.close()
print("DIAL_ATTEMPTS=%d" % attempts)
print("DIAL_SECONDS=%.1f" % (time.time() - t0))
print("DIAL_FAILURES=%s" % sorted(set(why)))
if conn is None:
    print("DIAL=gave up"); sys.exit(0)
print("DIAL=ok")
conn.settimeout(120)
data = os.urandom(1 << 20)
def tx(): conn.sendall(data); conn.shutdown(socket.SHUT_WR)
t = threading.Thread(target=tx); t.start()
got = bytearray()
while True:
    b = conn.recv(1 << 16)
    if not b: break
    got += b
t.join()
print("ECHO=" + ("ok" if hashlib.md5(got).digest() == hashlib.md5(data).digest() else "mismatch %d" % len(got)))
PY
  cat "$T/dial.out"
  expect_eq "vsock.DialContext(firecracker.vsock, 10789) as the agent client" "$(sed -n 's/^DIAL=//p' "$T/dial.out")" ok
  [[ $(sed -n 's/^DIAL_ATTEMPTS=//p' "$T/dial.out") -ge 2 ]] && pass "dials before the agent listened were closed without OK, and retried" \
    || fail "expected refused dials before the agent listened: $(tr '\n' ' ' < "$T/dial.out")"
  expect_eq "1 MiB echoed by the guest's agent port" "$(sed -n 's/^ECHO=//p' "$T/dial.out")" ok
  sdk_expect "GET /vm/config" 200 GET /vm/config
  model_check FullVmConfiguration "assert j['vsock']['guest_cid'] == 3 and j['vsock']['uds_path'] == 'firecracker.vsock', j['vsock']"
  sdk_expect "SendCtrlAltDel (Shutdown)" 204 PUT /actions '{"action_type":"SendCtrlAltDel"}'
  wait_exit 120
  expect_eq "Ember status after Shutdown" "$RC" 0
  ;;
containerd_create)
  # firecracker-containerd CreateVM with the noop jailer and the quickstart's runtime config
  # (firecracker_binary_path set, "log_levels": ["debug"], "cpu_template": "T2"), one
  # container, no drive mounts, no network interfaces:
  # - the shim runs in its shim dir; BuildJailedMachine spawns the binary with only
  #   `--api-sock firecracker.sock`, a path relative to that dir;
  # - buildVMConfiguration mkfifo's fc-logs.fifo and fc-metrics.fifo and passes them as
  #   LogPath/MetricsPath, so the SDK's CreateLogFilesHandler opens each O_RDWR|O_CREATE|O_APPEND
  #   and closes it again;
  # - machine-config: defaults 1 vCPU, 128 MiB, smt false; the cpu_template only on Intel
  #   (internal.SupportCPUTemplate: vendor_id GenuineIntel), "" (omitted) elsewhere;
  # - drives: the root drive, read-only, then one container stub drive "ctrstub0" (id base32 of
  #   the file name), 512 bytes: the stub magic, the id's length and the id;
  # - after boot, Create (a task) PATCHes the stub to the container's image, and Delete
  #   (Release) PATCHes it back to filepath.Base(stubPath), a relative path.
  # Not replayed until those issues land: PUT /vsock (agent_api; the agent talks over vsock)
  # and the CNI network interface of the quickstart config.
  SHIM=$T/shim
  mkdir -p "$SHIM"
  STUB_ID=MN2HE43UOVRDA
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/default-rootfs.img"
  put_script "$T/default-rootfs.img" "echo ROOT_RO=\$(cat /sys/block/vda/ro)
echo STUB_SECTORS=\$(cat /sys/block/vdb/size)
echo STUB_MAGIC=\$(dd if=/dev/vdb bs=8 count=1 2>/dev/null | od -An -tu1 | tr -s ' ' | sed 's/^ //;s/ \$//')
echo STUB_ID=\$(dd if=/dev/vdb bs=1 skip=9 count=13 2>/dev/null)
echo IOAPIC_LINES=\$(grep -c IO-APIC /proc/interrupts)
echo READY=1
i=0; while [ \$(cat /sys/block/vdb/size) = 1 ] && [ \$i -lt 900 ]; do sleep 0.2; i=\$((i+1)); done
echo PATCHED_SECTORS=\$(cat /sys/block/vdb/size)
mkdir -p /tmp/ctr && mount -t ext4 -o rw /dev/vdb /tmp/ctr && echo CTR_FILE=\$(cat /tmp/ctr/hello) && echo from-guest > /tmp/ctr/written && umount /tmp/ctr
echo UNMOUNTED=1
i=0; while [ \$(cat /sys/block/vdb/size) != 1 ] && [ \$i -lt 900 ]; do sleep 0.2; i=\$((i+1)); done
echo STUB_AGAIN=\$(dd if=/dev/vdb bs=1 skip=9 count=13 2>/dev/null)
echo DONE=1
sleep 600"
  # The stub as newStubDrive writes it, padded to one sector.
  python3 -c "import sys; i=b'$STUB_ID'; sys.stdout.buffer.write(bytes([214,244,216,245,215,177,177,177,len(i)])+i)" > "$SHIM/ctrstub0"
  truncate -s 512 "$SHIM/ctrstub0"
  mkdir -p "$T/ctr-tree" && echo hello-from-containerd > "$T/ctr-tree/hello"
  mkfs.ext4 -q -F -b 4096 -d "$T/ctr-tree" "$T/ctr.img" 8M >/dev/null 2>&1 || { fail "mkfs.ext4 -d"; finish; }
  mkfifo -m 0700 "$SHIM/fc-logs.fifo" "$SHIM/fc-metrics.fifo"
  cd "$SHIM" || exit 2
  spawn --api-sock firecracker.sock
  cd "$T" || exit 2
  SOCK=$SHIM/firecracker.sock  # the shim polls and connects to ./firecracker.sock in its dir
  sdk_wait_socket
  # CreateLogFilesHandler on LogPath/MetricsPath (no *Fifo set): open O_RDWR|O_CREATE|O_APPEND,
  # close. A FIFO opened read-write does not block.
  for f in fc-metrics.fifo fc-logs.fifo; do exec {fd}<>"$SHIM/$f" && exec {fd}>&- || fail "open $f O_RDWR"; done
  fifo_reader "$SHIM/fc-logs.fifo" "$T/log.out"
  sdk_expect "PUT /logger" 204 PUT /logger "{\"level\":\"Debug\",\"log_path\":\"$SHIM/fc-logs.fifo\",\"show_level\":true,\"show_log_origin\":false}"
  sdk_expect "PUT /metrics" 204 PUT /metrics "{\"metrics_path\":\"$SHIM/fc-metrics.fifo\"}"
  if grep -q '^vendor_id.*GenuineIntel' /proc/cpuinfo; then TEMPLATE=T2; MC='{"cpu_template":"T2","mem_size_mib":128,"smt":false,"vcpu_count":1}'
  else TEMPLATE=; MC='{"mem_size_mib":128,"smt":false,"vcpu_count":1}'; fi
  echo "CPU vendor: $(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2); containerd sends cpu_template '${TEMPLATE:-(none)}'"
  sdk_expect "PUT /machine-config" 204 PUT /machine-config "$MC"
  sdk_expect "GET /machine-config" 200 GET /machine-config
  model_check MachineConfiguration "assert (j['vcpu_count'], j['mem_size_mib']) == (1, 128) and j.get('cpu_template') in (('$TEMPLATE',) if '$TEMPLATE' else (None, 'None')), j"
  # runtime config defaultKernelArgs through the SDK's kernelArgs map, plus the init command.
  ARGS="nomodules rw console=ttyS0 noapic reboot=k panic=1 pci=off loglevel=4 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd init=/init -- sh /t.sh"
  sdk_expect "PUT /boot-source" 204 PUT /boot-source "{\"boot_args\":\"$ARGS\",\"kernel_image_path\":\"$K/vmlinux\"}"
  sdk_expect "PUT /drives/root_drive (read-only)" 204 PUT /drives/root_drive "{\"drive_id\":\"root_drive\",\"is_read_only\":true,\"is_root_device\":true,\"path_on_host\":\"$T/default-rootfs.img\"}"
  sdk_expect "PUT /drives/$STUB_ID (stub)" 204 PUT /drives/$STUB_ID "{\"drive_id\":\"$STUB_ID\",\"is_read_only\":false,\"is_root_device\":false,\"path_on_host\":\"$SHIM/ctrstub0\"}"
  sdk_expect "InstanceStart" 204 PUT /actions '{"action_type":"InstanceStart"}'
  wait_line READY 180 || { fail "guest never got ready"; give_up; }
  expect_eq "root drive read-only in the guest" "$(guest_value ROOT_RO)" 1
  expect_eq "stub drive is one sector" "$(guest_value STUB_SECTORS)" 1
  expect_eq "stub magic bytes" "$(guest_value STUB_MAGIC)" "214 244 216 245 215 177 177 177"
  expect_eq "stub carries its drive id" "$(guest_value STUB_ID)" "$STUB_ID"
  expect_eq "noapic: no IO-APIC interrupts in the guest" "$(guest_value IOAPIC_LINES)" 0
  # Create: StubDriveHandler.Reserve -> PatchAndMount -> UpdateGuestDrive (models.PartialDrive).
  sdk_expect "PATCH /drives/$STUB_ID (container image)" 204 PATCH /drives/$STUB_ID "{\"drive_id\":\"$STUB_ID\",\"path_on_host\":\"$T/ctr.img\"}"
  wait_line UNMOUNTED 120 || { fail "guest never saw the patched drive"; give_up; }
  expect_eq "guest sees the image's size" "$(guest_value PATCHED_SECTORS)" 16384
  expect_eq "guest mounts the container image" "$(guest_value CTR_FILE)" hello-from-containerd
  # Delete: Release -> UpdateGuestDrive(driveID, filepath.Base(stubPath)): relative to the
  # VMM's working directory, the shim dir.
  sdk_expect "PATCH /drives/$STUB_ID back to ctrstub0 (relative)" 204 PATCH /drives/$STUB_ID "{\"drive_id\":\"$STUB_ID\",\"path_on_host\":\"ctrstub0\"}"
  wait_line DONE 120 || { fail "guest never saw the stub again"; give_up; }
  expect_eq "guest sees the stub again" "$(guest_value STUB_AGAIN)" "$STUB_ID"
  got=$(debugfs -R "cat /written" "$T/ctr.img" 2>/dev/null)
  expect_eq "the guest's write reached the container image" "$got" from-guest
  sdk_expect "GET /vm/config" 200 GET /vm/config
  model_check FullVmConfiguration "
d = {x['drive_id']: x for x in j['drives']}
assert set(d) == {'root_drive', '$STUB_ID'}, d
assert d['root_drive']['is_read_only'] is True, d
assert d['$STUB_ID']['path_on_host'] in ('ctrstub0', '$SHIM/ctrstub0'), d"
  fifo_reader "$SHIM/fc-metrics.fifo" "$T/metrics.out"
  sleep 0.5
  sdk_expect "FlushMetrics" 204 PUT /actions '{"action_type":"FlushMetrics"}'
  # StopVM -> shutdown: the agent's Shutdown over vsock is not replayed; the SDK's Shutdown()
  # (SendCtrlAltDel), then StopVMM (SIGTERM) if the VM is still there.
  sdk_expect "SendCtrlAltDel" 204 PUT /actions '{"action_type":"SendCtrlAltDel"}'
  wait_exit 120
  expect_eq "Ember status after StopVM" "$RC" 0
  wait
  [[ -S $SHIM/firecracker.sock ]] && fail "socket left in the shim dir" || pass "socket removed from the shim dir"
  check_log_lines "$T/log.out" anonymous-instance 0
  check_metrics "$T/metrics.out" "
assert tot('block_$STUB_ID', 'update_count') == 2, tot('block_$STUB_ID', 'update_count')
assert tot('patch_api_requests', 'drive_count') == 2, tot('patch_api_requests', 'drive_count')"
  ;;
getting_started)
  # docs/getting-started.md, "Starting Firecracker": two shells in one directory; the kernel,
  # rootfs and log file are given as ./relative paths; plain `curl -X PUT --data` (so
  # Content-Type is application/x-www-form-urlencoded) with the JSON spread over lines; no
  # machine-config (1 vCPU, 128 MiB); a TAP on 172.16.0.1/30; the guest's address derived from
  # its MAC as fcnet-setup.sh does; the doc's in-guest default route; `reboot` to end.
  # The guest here runs /t.sh instead of offering an ssh login.
  GS=$T/gs; mkdir -p "$GS"
  cp "$K/vmlinux" "$GS/vmlinux-6.1"
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$GS/ubuntu-22.04.ext4"
  put_script "$GS/ubuntu-22.04.ext4" 'mac=$(cat /sys/class/net/eth0/address)
ip=$(printf "%d.%d.%d.%d" $(echo $mac | cut -d: -f3-6 | sed "s/\([0-9a-f][0-9a-f]\)/0x\1/g; s/:/ /g"))
ip addr add $ip/30 dev eth0
ip link set eth0 up
ip route add default via 172.16.0.1 dev eth0
echo GUEST_IP=$ip
echo ROUTE=$(ip route | grep -c "^default via 172.16.0.1 dev eth0")
ping -c 3 -W 5 172.16.0.1 >/dev/null && echo PING_HOST=ok || echo PING_HOST=fail
echo READY=1
i=0; while [ $(awk "/^Icmp:/ && \$2 ~ /^[0-9]+$/ {print \$10}" /proc/net/snmp) -lt 3 ] && [ $i -lt 600 ]; do sleep 0.2; i=$((i+1)); done
echo HOST_PINGS_SEEN=$(awk "/^Icmp:/ && \$2 ~ /^[0-9]+$/ {print \$10}" /proc/net/snmp)
echo ROOTFS_RW=$(touch /x && echo 1)'
  make_tap tap0 172.16.0.1/30
  cd "$GS" || exit 2
  spawn --api-sock "$SOCK"
  for _ in $(seq 1 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
  touch ./firecracker.log
  doc_expect "PUT /logger (relative log_path)" 204 PUT /logger --data "{
        \"log_path\": \"./firecracker.log\",
        \"level\": \"Debug\",
        \"show_level\": true,
        \"show_log_origin\": true
    }"
  KERNEL="./$(ls vmlinux* | tail -1)"
  KERNEL_BOOT_ARGS="console=ttyS0 reboot=k panic=1 pci=off loglevel=4 -- sh /t.sh"
  doc_expect "PUT /boot-source (relative kernel)" 204 PUT /boot-source --data "{
        \"kernel_image_path\": \"${KERNEL}\",
        \"boot_args\": \"${KERNEL_BOOT_ARGS}\"
    }"
  ROOTFS="./ubuntu-22.04.ext4"
  doc_expect "PUT /drives/rootfs (relative path)" 204 PUT /drives/rootfs --data "{
        \"drive_id\": \"rootfs\",
        \"path_on_host\": \"${ROOTFS}\",
        \"is_root_device\": true,
        \"is_read_only\": false
    }"
  FC_MAC="06:00:AC:10:00:02"
  doc_expect "PUT /network-interfaces/net1" 204 PUT /network-interfaces/net1 --data "{
        \"iface_id\": \"net1\",
        \"guest_mac\": \"$FC_MAC\",
        \"host_dev_name\": \"tap0\"
    }"
  sleep 0.015s
  doc_expect "InstanceStart" 204 PUT /actions --data "{
        \"action_type\": \"InstanceStart\"
    }"
  wait_line READY 180 || { fail "guest never got ready"; give_up; }
  expect_eq "guest address from its MAC (fcnet-setup)" "$(guest_value GUEST_IP)" 172.16.0.2
  expect_eq "default route via the TAP" "$(guest_value ROUTE)" 1
  expect_eq "guest pings the host" "$(guest_value PING_HOST)" ok
  busybox ping -c 3 -W 5 172.16.0.2 >/dev/null && pass "host pings 172.16.0.2 (the doc's ssh target)" || fail "host cannot reach 172.16.0.2"
  wait_exit 120
  expect_eq "Ember status after the guest's reboot" "$RC" 0
  expect_eq "guest saw the host's pings" "$(guest_value HOST_PINGS_SEEN)" 3
  expect_eq "rootfs writable" "$(guest_value ROOTFS_RW)" 1
  check_log_lines ./firecracker.log anonymous-instance 1
  ;;
patch_block_doc)
  # docs/api_requests/patch-block.md: an empty (touch'ed) read-only drive; after boot the host
  # grows it to 100 MiB and puts ext4 on it, and PATCHes the same path (a rescan); then moves
  # the file and PATCHes the new path. The guest keeps the drive unmounted during each PATCH
  # (the doc's condition) and is told over the serial console when to read it again.
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
  put_script "$T/root.ext4" 'echo SIZE0=$(cat /sys/block/vdb/size)
echo READY=1
i=0; while [ $(cat /sys/block/vdb/size) = 0 ] && [ $i -lt 900 ]; do sleep 0.2; i=$((i+1)); done
echo SIZE1=$(cat /sys/block/vdb/size)
mkdir -p /tmp/m && mount -t ext4 -o ro /dev/vdb /tmp/m && echo FILE1=$(cat /tmp/m/f) && umount /tmp/m
echo UNMOUNTED=1
read -r go
mount -t ext4 -o ro /dev/vdb /tmp/m && echo FILE2=$(cat /tmp/m/f) && umount /tmp/m
echo SIZE2=$(cat /sys/block/vdb/size)'
  mkfifo "$T/console.in"
  SPAWN_STDIN=$T/console.in spawn --api-sock "$SOCK"
  exec 3> "$T/console.in"
  for _ in $(seq 1 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
  ro_drive_path=$T/ro.img new_ro_drive_path=$T/ro-moved.img
  touch "${ro_drive_path}"
  doc_expect "PUT /boot-source" 204 PUT /boot-source -H "Content-Type: application/json" -d "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  doc_expect "PUT /drives/rootfs" 204 PUT /drives/rootfs -H "Content-Type: application/json" -d "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  doc_expect "PUT /drives/scratch (empty file)" 204 PUT /drives/scratch -H "accept: application/json" -H "Content-Type: application/json" -d "{
            \"drive_id\": \"scratch\",
            \"path_on_host\": \"${ro_drive_path}\",
            \"is_root_device\": false,
            \"is_read_only\": true
         }"
  [[ $CODE == 204 ]] || give_up
  doc_expect "InstanceStart" 204 PUT /actions -H "Content-Type: application/json" -d '{"action_type": "InstanceStart"}'
  wait_line READY 180 || { fail "guest never got ready"; give_up; }
  expect_eq "empty drive has 0 sectors" "$(guest_value SIZE0)" 0
  mkdir -p "$T/tree" && echo first > "$T/tree/f"
  truncate --size 100M "${ro_drive_path}"
  mkfs.ext4 -q -F -d "$T/tree" "${ro_drive_path}" >/dev/null 2>&1 || fail "mkfs.ext4"
  doc_expect "PATCH /drives/scratch (same path: rescan)" 204 PATCH /drives/scratch -H "accept: application/json" -H "Content-Type: application/json" -d "{
            \"drive_id\": \"scratch\",
            \"path_on_host\": \"${ro_drive_path}\"
         }"
  wait_line UNMOUNTED 120 || { fail "guest never saw the rescan"; give_up; }
  expect_eq "guest sees 100 MiB after the rescan" "$(guest_value SIZE1)" 204800
  expect_eq "guest reads the new filesystem" "$(guest_value FILE1)" first
  mv "${ro_drive_path}" "${new_ro_drive_path}"
  doc_expect "PATCH /drives/scratch (moved file)" 204 PATCH /drives/scratch -H "accept: application/json" -H "Content-Type: application/json" -d "{
            \"drive_id\": \"scratch\",
            \"path_on_host\": \"${new_ro_drive_path}\"
         }"
  doc_expect "GET /vm/config" 200 GET /vm/config
  model_check FullVmConfiguration "assert [d['path_on_host'] for d in j['drives'] if d['drive_id'] == 'scratch'] == ['$new_ro_drive_path'], j['drives']"
  echo go >&3
  wait_exit 120
  exec 3>&-
  expect_eq "Ember status" "$RC" 0
  expect_eq "guest reads the moved file" "$(guest_value FILE2)" first
  expect_eq "size unchanged after the move" "$(guest_value SIZE2)" 204800
  ;;
patch_net_doc)
  # docs/api_requests/patch-network-interface.md: iface_1 on fctap1 with rx and tx limiters
  # (1 KiB/s after a 1 MiB one-time burst); after boot a PATCH of the rx limiter (bandwidth and
  # ops; tx stays as it was), then a PATCH that disables the tx limiter with 0-sized buckets.
  # The guest then sends 4 MiB: at the PUT's tx limit that would take about 50 minutes.
  make_tap fctap1 192.168.52.1/30
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
  put_script "$T/root.ext4" 'ip addr add 192.168.52.2/30 dev eth0
ip link set eth0 up
echo MAC=$(cat /sys/class/net/eth0/address)
ping -c 2 -W 5 192.168.52.1 >/dev/null && echo PING_HOST=ok || echo PING_HOST=fail
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=4 2>/dev/null
echo TX_MD5=$(md5sum /tmp/tx.bin | cut -c1-32)
echo READY=1
nc -l -p 5001 < /tmp/tx.bin
echo SENT=1
sleep 600'
  spawn --api-sock "$SOCK"
  for _ in $(seq 1 100); do [[ -S $SOCK ]] && break; sleep 0.1; done
  H=(-H "Content-Type: application/json" -H "Accept: application/json")
  doc_expect "PUT /boot-source" 204 PUT /boot-source "${H[@]}" -d "{\"kernel_image_path\": \"$K/vmlinux\", \"boot_args\": \"$BASE_ARGS -- sh /t.sh\"}"
  doc_expect "PUT /drives/rootfs" 204 PUT /drives/rootfs "${H[@]}" -d "{\"drive_id\": \"rootfs\", \"path_on_host\": \"$T/root.ext4\", \"is_root_device\": true, \"is_read_only\": false}"
  doc_expect "PUT /network-interfaces/iface_1 with rx/tx limiters" 204 PUT /network-interfaces/iface_1 "${H[@]}" -d '{
    "iface_id": "iface_1",
    "host_dev_name": "fctap1",
    "guest_mac": "06:00:c0:a8:34:02",
    "rx_rate_limiter": {
        "bandwidth": {
            "size": 1024,
            "one_time_burst": 1048576,
            "refill_time": 1000
        }
    },
    "tx_rate_limiter": {
        "bandwidth": {
            "size": 1024,
            "one_time_burst": 1048576,
            "refill_time": 1000
        }
    }
}'
  [[ $CODE == 204 ]] || give_up
  doc_expect "InstanceStart" 204 PUT /actions "${H[@]}" -d '{"action_type": "InstanceStart"}'
  wait_line READY 180 || { fail "guest never got ready"; give_up; }
  expect_eq "guest MAC" "$(guest_value MAC)" 06:00:c0:a8:34:02
  expect_eq "guest pings the host within the burst" "$(guest_value PING_HOST)" ok
  doc_expect "PATCH rx_rate_limiter" 204 PATCH /network-interfaces/iface_1 "${H[@]}" -d '{
    "iface_id": "iface_1",
    "rx_rate_limiter": {
        "bandwidth": {
            "size": 1048576,
            "refill_time": 1000
        },
        "ops": {
            "size": 2000,
            "refill_time": 1000
        }
    }
}'
  doc_expect "GET /vm/config" 200 GET /vm/config
  model_check FullVmConfiguration "
n = j['network-interfaces'][0]
assert n['rx_rate_limiter']['bandwidth']['size'] == 1048576 and n['rx_rate_limiter']['ops']['size'] == 2000, n
assert n['tx_rate_limiter']['bandwidth']['size'] == 1024 and n['tx_rate_limiter']['bandwidth']['one_time_burst'] == 1048576, n"
  doc_expect "PATCH tx_rate_limiter to 0-sized buckets (removal)" 204 PATCH /network-interfaces/iface_1 "${H[@]}" -d '{
    "iface_id": "iface_1",
    "tx_rate_limiter": {
        "bandwidth": {
            "size": 0,
            "refill_time": 0
        },
        "ops": {
            "size": 0,
            "refill_time": 0
        }
    }
}'
  t0=$(now_ms)
  got=$(timeout 120 python3 - <<'PY'
import hashlib, socket, time
for _ in range(150):
    try:
        s = socket.create_connection(("192.168.52.2", 5001), timeout=5); break
    except OSError:
        time.sleep(0.2)
else:
    raise SystemExit("cannot connect")
s.settimeout(60)
h, n = hashlib.md5(), 0
while True:
    b = s.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest())
PY
)
  ms=$(( $(now_ms) - t0 ))
  expect_eq "4 MiB from the guest after the tx limiter was removed" "$got" "$((4 * 1024 * 1024)) $(guest_value TX_MD5)"
  (( ms < 60000 )) && pass "transfer took $ms ms (unthrottled)" || fail "transfer took $ms ms"
  doc_expect "SendCtrlAltDel" 204 PUT /actions "${H[@]}" -d '{"action_type": "SendCtrlAltDel"}'
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
[[ -n ${EMBER_PID:-} ]] && kill -9 "$EMBER_PID" 2>/dev/null
if [[ $FAILS -gt 0 ]]; then
  echo "--- console (tail):" >&2; tail -n 40 "$T/console.out" >&2
  echo "--- ember stderr (tail):" >&2; tail -n 20 "$T/ember.err" >&2
fi
finish
