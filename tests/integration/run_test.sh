#!/usr/bin/env bash
# `ember run` on real KVM (issue 16, point 7). `run_test.sh CASE`:
#   statuses: exit 0, 1, 7; killed by SIGUSR1 (138); not found (127) and not executable (126)
#             with one line on stderr; a guest that dies (a root image that is no filesystem: the
#             agent cannot mount it) gives 123 and one line; a -t run gets a pty of 24x80.
#   streams:  64 MiB of random bytes through stdout and another 64 MiB through stderr at once
#             (read by the command from two read-only drives), each arriving intact and apart;
#             nothing else on either stream; stdin round trip of 8 MiB with -i.
#   args:     argv with spaces, quotes, newlines, non-ASCII and 1 MiB of arguments, -e and -w,
#             arrive exactly (hashed in the guest, compared on the host).
#   disk:     a command that writes to the root image and a writable --drive leaves both images'
#             hashes unchanged; --keep-disk writes an image holding the change.
#   signals:  --timeout ends a sleeping command with 124; SIGINT to Ember reaches the command
#             (130); SIGTERM reaches a command that traps it (its own status).
#   warm:     the first --warm run caches a snapshot taken at agent-ready; the next ones restore
#             it, each with its own disk layer, env and cwd; a damaged cached snapshot (or one
#             missing its memory file) is a cache miss: that run boots and caches a new one.
#   repeat:   20 runs in a row leave no Ember process, socket or file behind.
#   net:      --net without a TAP (passt): the guest fetches a page from an HTTP server on the
#             host's loopback through the gateway address, over IPv4 and IPv6, and resolves a name through the DNS
#             address (passt forwards it to the resolver in the host's resolv.conf, a stub this
#             test runs); a host where passt cannot start gives 125 and passt's reason. It runs in
#             network and mount namespaces of its own, with a TAP standing in for the uplink
#             (passt copies the host's default routes and, for IPv6, needs a link-local address
#             there; L1 has no NIC) and its own resolv.conf.
if [[ ${1:-} == net && -z ${EMBER_RUN_NETNS:-} ]]; then
  exec env EMBER_RUN_NETNS=1 unshare -n -m --propagation private -- bash "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
need_guest
case_name=${1:?usage: run_test.sh CASE}
export TMPDIR=$T/tmp # ember run's private directories go here: the repeat case counts them
mkdir -p "$TMPDIR"

# er NAME [EMBER RUN ARGS...]: `ember run` with a timeout; stdin from $T/NAME.in when it exists.
# Sets RC, OUT, ERR.
er() {
  local name=$1 in=/dev/null; shift
  [[ -f $T/$name.in ]] && in=$T/$name.in
  timeout -k "$KILL_AFTER" "$VM_TIMEOUT" "$EMBER_BIN" run "$@" < "$in" > "$T/$name.out" 2> "$T/$name.err"
  RC=$?
  OUT=$T/$name.out ERR=$T/$name.err
}
md5() { md5sum "$1" | cut -d' ' -f1; }
lines() { wc -l < "$1" | tr -d ' '; }

case $case_name in
statuses)
  for code in 0 1 7; do
    er "exit$code" -- sh -c "exit $code"
    expect_eq "exit $code" "$RC" "$code"
    expect_eq "exit $code: empty stderr" "$(cat "$ERR")" ""
  done
  er usr1 -- sh -c 'kill -USR1 $$'
  expect_eq "killed by SIGUSR1: 128+10" "$RC" 138
  er notfound -- no-such-command arg
  expect_eq "not found" "$RC" 127
  expect_eq "not found: one line" "$(lines "$ERR")" 1
  grep -q "no-such-command" "$ERR" && pass "not found: names the command" || fail "not found: $(cat "$ERR")"
  er notexec -- /etc
  expect_eq "not executable" "$RC" 126
  expect_eq "not executable: one line" "$(lines "$ERR")" 1
  truncate -s 16M "$T/zeros.img"
  er dead --rootfs "$T/zeros.img" -- true
  expect_eq "guest dies: status" "$RC" 123
  expect_eq "guest dies: one line" "$(lines "$ERR")" 1
  grep -q "guest" "$ERR" && pass "guest dies: says so ($(cat "$ERR"))" || fail "guest dies: $(cat "$ERR")"
  er tty -t -- sh -c 'tty; stty size'
  expect_eq "-t: status" "$RC" 0
  expect_eq "-t: a pty of 24x80" "$(tr -d '\r' < "$OUT" | tr '\n' ' ')" "/dev/pts/0 24 80 "
  ;;
streams)
  head -c 64M /dev/urandom > "$T/a.img"
  head -c 64M /dev/urandom > "$T/b.img"
  er big --drive "$T/a.img:ro" --drive "$T/b.img:ro" -- sh -c 'cat /dev/vdb & cat /dev/vdc >&2; wait'
  expect_eq "64 MiB each way: status" "$RC" 0
  expect_eq "stdout: 64 MiB intact" "$(md5 "$OUT")" "$(md5 "$T/a.img")"
  expect_eq "stderr: 64 MiB intact" "$(md5 "$ERR")" "$(md5 "$T/b.img")"
  head -c 8M /dev/urandom > "$T/echo.in"
  er echo -i -- cat
  expect_eq "stdin round trip: status" "$RC" 0
  expect_eq "stdin round trip: 8 MiB back" "$(md5 "$OUT")" "$(md5 "$T/echo.in")"
  expect_eq "stdin round trip: empty stderr" "$(stat -c %s "$ERR")" 0
  er noin -- sh -c 'wc -c'
  expect_eq "without -i the command's stdin is empty" "$(tr -d ' ' < "$OUT")" 0
  ;;
args)
  args=("a b" "'single'" '"double"' 'back\slash' $'new\nline' "tab	x" "ünïcödé ✓" '$HOME' '*' '')
  big=$(head -c 3000 /dev/zero | tr '\0' 'x')
  for i in $(seq 1 350); do args+=("$i$big"); done # 1 MiB and more in all
  printf '%s\0' "${args[@]}" > "$T/args.expected"
  er argv -- sh -c 'printf "%s\0" "$@" | md5sum' argv0 "${args[@]}"
  expect_eq "argv: status" "$RC" 0
  expect_eq "argv: $(stat -c %s "$T/args.expected") bytes of arguments arrive exactly" "$(cut -d' ' -f1 "$OUT")" "$(md5 "$T/args.expected")"
  er env -e 'X=a b=c' -e 'U=ünï' -e EMPTY= -e FROM_HOST -w /proc -- sh -c 'printf "%s|%s|%s|%s|%s" "$X" "$U" "${EMPTY-unset}" "$FROM_HOST" "$(pwd)"'
  expect_eq "env and workdir" "$(cat "$OUT")" "a b=c|ünï|||/proc"
  FROM_HOST=hostvalue er env2 -e FROM_HOST -- sh -c 'printf %s "$FROM_HOST"'
  expect_eq "-e VAR takes Ember's value" "$(cat "$OUT")" hostvalue
  ;;
disk)
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.img"
  head -c 4M /dev/urandom > "$T/data.img"
  root_md5=$(md5 "$T/root.img") data_md5=$(md5 "$T/data.img")
  er write --rootfs "$T/root.img" --drive "$T/data.img" --keep-disk "$T/kept.img" -- \
    sh -c 'echo changed > /marker && head -c 1048576 /dev/zero > /dev/vdb && sync && cat /marker'
  expect_eq "write: status" "$RC" 0
  expect_eq "the guest saw its own write" "$(cat "$OUT")" changed
  expect_eq "root image unchanged" "$(md5 "$T/root.img")" "$root_md5"
  expect_eq "data drive unchanged" "$(md5 "$T/data.img")" "$data_md5"
  expect_eq "--keep-disk holds the change" "$("$(command -v debugfs || echo /sbin/debugfs)" -R 'cat /marker' "$T/kept.img" 2>/dev/null)" changed
  er again --rootfs "$T/root.img" -- sh -c 'cat /marker 2>/dev/null || echo absent'
  expect_eq "the next run starts from the unchanged image" "$(cat "$OUT")" absent
  er kept --rootfs "$T/kept.img" -- cat /marker
  expect_eq "the kept image boots and holds the change" "$(cat "$OUT")" changed
  ;;
signals)
  er timeout --timeout 2 -- sleep 600
  expect_eq "--timeout: 124" "$RC" 124
  expect_eq "--timeout: one line" "$(lines "$ERR")" 1
  # The command says "ready" once it runs; then Ember gets the signal.
  for sig in INT TERM; do
    timeout -k "$KILL_AFTER" "$VM_TIMEOUT" "$EMBER_BIN" run -- sh -c 'trap "echo trapped; exit 3" TERM; echo ready; sleep 600 & wait' \
      < /dev/null > "$T/sig$sig.out" 2> "$T/sig$sig.err" &
    pid=$!
    for _ in $(seq 1 600); do grep -q ready "$T/sig$sig.out" && break; sleep 0.1; done
    kill -"$sig" "$pid"
    wait "$pid"; rc=$?
    if [[ $sig == INT ]]; then
      expect_eq "SIGINT reaches the command: 128+2" "$rc" 130
    else
      expect_eq "SIGTERM reaches the command's trap: its status" "$rc" 3
      expect_eq "SIGTERM: the trap's output" "$(tail -n 1 "$T/sig$sig.out")" trapped
    fi
  done
  ;;
warm)
  export EMBER_CACHE=$T/cache
  cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.img"
  root_md5=$(md5 "$T/root.img")
  er first --warm --rootfs "$T/root.img" -- sh -c 'echo one > /marker; cat /marker'
  expect_eq "first --warm run: status and output" "$RC:$(cat "$OUT")" "0:one"
  entries=$(ls "$EMBER_CACHE/run-warm" | wc -l)
  expect_eq "first --warm run: one cached snapshot" "$entries" 1
  er second --warm --rootfs "$T/root.img" -e X=2 -w /proc -- sh -c 'cat /marker 2>/dev/null || echo "absent $X $(pwd)"'
  expect_eq "second --warm run (restored): its own disk, env and cwd" "$RC:$(cat "$OUT")" "0:absent 2 /proc"
  er third --warm --rootfs "$T/root.img" -- sh -c 'exit 9'
  expect_eq "third --warm run: status" "$RC" 9
  expect_eq "--warm runs leave the image unchanged" "$(md5 "$T/root.img")" "$root_md5"
  expect_eq "still one cached snapshot" "$(ls "$EMBER_CACHE/run-warm" | wc -l)" 1
  entry=$(ls -d "$EMBER_CACHE"/run-warm/*)
  head -c 100 "$entry/state" > "$T/short" && cp "$T/short" "$entry/state"
  er damaged --warm --rootfs "$T/root.img" -- echo booted
  expect_eq "a damaged cached snapshot is a cache miss: the run boots" "$RC:$(cat "$OUT")" "0:booted"
  expect_eq "a damaged cached snapshot: nothing on stderr" "$(cat "$ERR")" ""
  entry=$(ls -d "$EMBER_CACHE"/run-warm/*)
  [[ $(stat -c %s "$entry/state") -gt 100 ]] && pass "a damaged cached snapshot: replaced by a whole one" || fail "state: $(stat -c %s "$entry/state") bytes"
  rm "$entry/memory"
  er nomem --warm --rootfs "$T/root.img" -- echo booted
  expect_eq "a cached snapshot without its memory file: the run boots" "$RC:$(cat "$OUT")" "0:booted"
  EMBER_RUN_LOG=$T/remade.log er remade --warm --rootfs "$T/root.img" -- sh -c 'cat /marker 2>/dev/null || echo ok'
  expect_eq "the next --warm run: status and output" "$RC:$(cat "$OUT")" "0:ok"
  grep -q "ember run: VM restored" "$T/remade.log" && pass "the next --warm run restores the new snapshot" || fail "not restored: $(cat "$T/remade.log")"
  expect_eq "one cached snapshot at the end" "$(ls "$EMBER_CACHE/run-warm" | wc -l)" 1
  ;;
repeat)
  for i in $(seq 1 20); do
    er "r$i" -- true
    [[ $RC -eq 0 ]] || fail "run $i: status $RC: $(cat "$ERR")"
  done
  expect_eq "20 runs: nothing left in TMPDIR" "$(ls -A "$TMPDIR" | wc -l)" 0
  left=$(pgrep -f "$EMBER_BIN run" | wc -l)
  expect_eq "20 runs: no Ember process left" "$left" 0
  ;;
net)
  command -v passt > /dev/null || fail "passt is not installed (scripts/test installs Debian's passt)"
  ip link set lo up
  ip tuntap add dev uplink0 mode tap && ip addr add 192.0.2.2/24 dev uplink0 && ip link set uplink0 up \
    && ip route add default via 192.0.2.1 && ip -6 addr add 2001:db8::2/64 dev uplink0 nodad \
    && ip -6 route add default via 2001:db8::1 dev uplink0 && ip -6 addr add fe80::2/64 dev uplink0 nodad \
    || fail "cannot set up the stand-in uplink"
  echo "nameserver 192.0.2.2" > "$T/resolv.conf"
  mount --bind "$T/resolv.conf" /etc/resolv.conf || fail "cannot bind-mount a resolv.conf"
  mkdir -p "$T/www"
  token="page-$RANDOM-$RANDOM"
  echo "$token" > "$T/www/hello.txt"
  cat > "$T/servers.py" <<'PY'
import http.server, socket, socketserver, sys, threading
# DNS stub on the stand-in uplink's address: every A query is answered with 10.0.2.2.
def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("192.0.2.2", 53))
    while True:
        q, peer = s.recvfrom(512)
        end = q.index(b"\0", 12) + 5  # the question: name, type, class
        is_a = q[end - 4:end - 2] == b"\0\1"
        head = q[:2] + b"\x81\x80" + b"\0\1" + (b"\0\1" if is_a else b"\0\0") + b"\0\0\0\0"
        ans = b"\xc0\x0c\0\1\0\1\0\0\0\x3c\0\4" + socket.inet_aton("10.0.2.2") if is_a else b""
        s.sendto(head + q[12:end] + ans, peer)
threading.Thread(target=dns, daemon=True).start()
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
handler = lambda *a, **k: Quiet(*a, directory=sys.argv[1], **k)
class V6(socketserver.TCPServer):
    address_family = socket.AF_INET6
srv6 = V6(("::1", 0), handler)
threading.Thread(target=srv6.serve_forever, daemon=True).start()
with socketserver.TCPServer(("127.0.0.1", 0), handler) as srv:
    open(sys.argv[2], "w").write("%d %d\n" % (srv.server_address[1], srv6.server_address[1]))
    srv.serve_forever()
PY
  python3 "$T/servers.py" "$T/www" "$T/port" &
  servers=$!
  for _ in $(seq 100); do [[ -s $T/port ]] && break; sleep 0.1; done
  read -r port port6 < "$T/port" || fail "the test's HTTP servers did not start"
  er fetch --net -- wget -q -O - "http://10.0.2.2:$port/hello.txt"
  expect_eq "--net: the guest fetches the host's loopback page through the gateway" "$RC:$(cat "$OUT")" "0:$token"
  # IPv6: the guest configures itself from passt's router advertisement (SLAAC, after DAD), and
  # passt maps the host's IPv6 gateway to the host's ::1.
  er fetch6 --net -- sh -c "for i in \$(seq 100); do wget -q -O - 'http://[2001:db8::1]:$port6/hello.txt' 2>/dev/null && exit 0; sleep 0.1; done; exit 1"
  expect_eq "--net: the guest fetches the host's ::1 page over IPv6" "$RC:$(cat "$OUT")" "0:$token"
  er dns --net -- sh -c 'cat /etc/resolv.conf; nslookup web.example 2>&1'
  expect_eq "--net: status of the DNS lookup" "$RC" 0
  grep -qx "nameserver 10.0.2.3" "$OUT" && pass "--net: the guest's resolv.conf names passt's DNS address" || fail "resolv.conf: $(cat "$OUT")"
  grep -A3 "web.example" "$OUT" | grep -q "10.0.2.2" && pass "--net: a name resolves through passt to the host's resolver" \
    || fail "DNS: $(cat "$OUT")"
  kill "$servers"
  er tap --net no-such-tap0 -- true
  expect_eq "--net TAP keeps meaning an existing TAP: a missing one is 125" "$RC" 125
  ip route del default
  ip link del uplink0
  er nouplink --net -- true
  expect_eq "--net on a host passt refuses: status 125" "$RC" 125
  grep -q "passt" "$ERR" && pass "--net on a host passt refuses: says why ($(tail -n 1 "$ERR"))" || fail "no uplink: $(cat "$ERR")"
  left=$(pgrep passt | wc -l)
  expect_eq "--net: no passt process left" "$left" 0
  ;;
*) fail "unknown case $case_name" ;;
esac
finish
