#!/usr/bin/env bash
# virtio-balloon (PUT/PATCH /balloon, /balloon/statistics) on real KVM: `balloon_test.sh CASE`.
# rss: a 512 MiB guest fills most of its free memory (a 400 MiB tmpfs file from /dev/zero, so
# the kernel touches every page) and frees it again; the host then inflates the balloon by
# 300 MiB and Ember's RSS (/proc/PID/smaps_rollup) must drop by at least 280 MiB; deflating to 0
# brings the balloon back to 0 pages. The statistics report the guest's MemTotal; runtime API
# refusals are checked on the way.
# oom: with deflate_on_oom the guest allocates past what the balloon left it and gets the pages.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: balloon_test.sh CASE}
SOCK=$T/api.sock
api() { curl -s -m 20 --unix-socket "$SOCK" -X "$1" -H 'Content-Type: application/json' -d "$3" -w ' %{http_code}' "http://localhost$2"; }
expect_status() { local name=$1 want=$2; shift 2; LAST=$(api "$@"); [[ ${LAST##* } == "$want" ]] && pass "$name -> $want" || fail "$name: wanted $want, got '$LAST'"; }
rss_kib() { sed -n 's/^Rss: *\([0-9]*\) kB/\1/p' "/proc/$EMBER_PID/smaps_rollup"; }
actual_mib() { api GET /balloon/statistics '' | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().rsplit(" ",1)[0])["actual_mib"])' 2>/dev/null; }
wait_actual() { # MIB TIMEOUT_S: until the driver reports the balloon at MIB
  for _ in $(seq 1 "$2"); do [[ $(actual_mib) == "$1" ]] && return 0; sleep 1; done
  return 1
}
wait_line() { # KEY TIMEOUT_S
  for _ in $(seq 1 $(($2 * 5))); do
    [[ -n $(guest_value "$1") ]] && return 0
    kill -0 "$EMBER_PID" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
stop_ember() { kill -9 "$EMBER_PID" 2>/dev/null; wait "$EMBER_PID" 2>/dev/null; }

case $case_name in
rss)
  GUEST='echo MEMTOTAL=$(grep MemTotal /proc/meminfo|tr -dc 0-9);mkdir -p /mnt/f;mount -t tmpfs -o size=460m f /mnt/f;head -c 400m /dev/zero >/mnt/f/z;rm /mnt/f/z;echo FILLED=1;sleep 900'
  write_config "$T/vm.json" "$K/vmlinux" 1 512 "$GUEST"
  python3 - "$T/vm.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["balloon"] = {"amount_mib": 0, "deflate_on_oom": False, "stats_polling_interval_s": 1}
json.dump(c, open(sys.argv[1], "w"))
PY
  "$EMBER_BIN" --api-sock "$SOCK" --config-file "$T/vm.json" < /dev/null > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  OUT=$T/console.out
  wait_line FILLED 300 || { fail "the guest did not fill its memory"; tail -n 30 "$OUT" "$T/ember.err" >&2; stop_ember; finish; }
  before=$(rss_kib)
  # Statistics: the guest's MemTotal as its driver reports it (before inflating: without
  # deflate_on_oom the driver takes inflated pages out of the guest's total).
  total=""
  for _ in $(seq 1 60); do
    total=$(api GET /balloon/statistics '' | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().rsplit(" ",1)[0]).get("total_memory",""))' 2>/dev/null)
    [[ -n $total ]] && break; sleep 1
  done
  mt=$(guest_value MEMTOTAL)
  [[ -n $total && -n $mt && $((total / 1024)) -eq $mt ]] && pass "statistics total_memory $total B = guest MemTotal $mt kB" \
    || fail "statistics total_memory '$total' B, guest MemTotal '$mt' kB"
  expect_status "PATCH /balloon bad body" 400 PATCH /balloon '{"amount_mib": "300"}'
  expect_status "PATCH /balloon/statistics switching stats off" 400 PATCH /balloon/statistics '{"stats_polling_interval_s": 0}'
  [[ $LAST == *'Cannot enable/disable the statistics after boot.'* ]] && pass "stats switch refused with Firecracker's message" || fail "stats off: $LAST"
  expect_status "PUT /balloon after boot" 400 PUT /balloon '{"amount_mib": 1, "deflate_on_oom": false}'
  expect_status "PATCH /balloon 300 MiB" 204 PATCH /balloon '{"amount_mib": 300}'
  if wait_actual 300 240; then pass "the driver inflated to 300 MiB"; else fail "balloon actual_mib $(actual_mib), wanted 300"; fi
  inflated=$(rss_kib)
  expect_status "GET /balloon" 200 GET /balloon ''
  [[ $LAST == *'"amount_mib":300'* ]] && pass "GET /balloon shows the new target" || fail "GET /balloon: $LAST"
  expect_status "GET /balloon/statistics" 200 GET /balloon/statistics ''
  [[ $LAST == *'"total_memory":'* && $LAST == *'"free_memory":'* ]] && pass "statistics carry the guest's memory" || fail "statistics: $LAST"
  expect_status "PATCH /balloon 0 MiB" 204 PATCH /balloon '{"amount_mib": 0}'
  if wait_actual 0 240; then pass "the driver deflated to 0"; else fail "balloon actual_mib $(actual_mib), wanted 0"; fi
  deflated=$(rss_kib)
  kill -0 "$EMBER_PID" 2>/dev/null && pass "Ember still runs" || fail "Ember ended"
  stop_ember
  echo "RSS_KIB before=$before inflated=$inflated deflated=$deflated"
  drop=$(( (before - inflated) / 1024 ))
  [[ $drop -ge 280 ]] && pass "RSS dropped by $drop MiB (>= 280) after inflating 300 MiB" || fail "RSS dropped by $drop MiB only ($before -> $inflated KiB)"
  ;;
oom)
  # deflate_on_oom: with 300 MiB in the balloon the guest allocates 330 MiB of tmpfs; its driver
  # gives balloon pages back at each OOM notification instead of the OOM killer ending anything.
  GUEST='mkdir -p /mnt/f;mount -t tmpfs -o size=470m f /mnt/f;echo READY=1;while [ $(grep MemFree /proc/meminfo|tr -dc 0-9) -gt 250000 ];do sleep 1;done;head -c 330m /dev/zero >/mnt/f/z&&echo ALLOC_OK=1;sleep 900'
  write_config "$T/vm.json" "$K/vmlinux" 1 512 "$GUEST"
  python3 - "$T/vm.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["balloon"] = {"amount_mib": 0, "deflate_on_oom": True, "stats_polling_interval_s": 1}
json.dump(c, open(sys.argv[1], "w"))
PY
  "$EMBER_BIN" --api-sock "$SOCK" --config-file "$T/vm.json" < /dev/null > "$T/console.out" 2> "$T/ember.err" &
  EMBER_PID=$!
  OUT=$T/console.out
  wait_line READY 300 || { fail "the guest did not start"; tail -n 30 "$OUT" "$T/ember.err" >&2; stop_ember; finish; }
  expect_status "PATCH /balloon 300 MiB" 204 PATCH /balloon '{"amount_mib": 300}'
  if wait_actual 300 240; then pass "the driver inflated to 300 MiB"; else fail "balloon actual_mib $(actual_mib), wanted 300"; fi
  if wait_line ALLOC_OK 240; then pass "the guest allocated 330 MiB with 300 MiB in the balloon"; else fail "the guest's allocation did not complete"; tail -n 20 "$OUT" >&2; fi
  grep -q 'Out of memory: Killed process' "$OUT" && fail "the OOM killer ran" || pass "no OOM kill"
  a=$(actual_mib)
  [[ -n $a && $a -lt 300 ]] && pass "the balloon deflated on OOM (actual $a MiB)" || fail "balloon actual '$a' MiB, expected < 300"
  kill -0 "$EMBER_PID" 2>/dev/null && pass "Ember still runs" || fail "Ember ended"
  stop_ember
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
