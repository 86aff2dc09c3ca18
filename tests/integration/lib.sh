# Helpers for Ember's integration tests; sourced by the test scripts.
# Needs: EMBER_BIN (the ember binary), and for guest boots EMBER_KERNEL_DIR (vmlinux, bzImage)
# and EMBER_ROOTFS_DIR (initrd.cpio.gz, rootfs.ext4), exported by scripts/test.
# shellcheck shell=bash
set -uo pipefail

: "${EMBER_BIN:?EMBER_BIN is not set (run through ctest or scripts/test)}"
T=$(mktemp -d "${TMPDIR:-/tmp}/ember-it.XXXXXX")
FAILS=0
# A failed test keeps its files (console, Ember's log, configs) next to the ember binary, i.e. in
# the build tree: inside the nested L1 that is on the host's share, while $T is on L1's tmpfs.
# Special files (FIFOs, sockets) are left out; 9p cannot hold them.
keep_on_failure() {
  local rc=$?
  if [[ $rc -ne 0 || $FAILS -ne 0 ]]; then
    local keep
    keep="$(dirname "$EMBER_BIN")/failed-tests/$(basename "$0" .sh)-${case_name:-x}-$(date +%H%M%S)"
    mkdir -p "$keep" && find "$T" -maxdepth 2 -type f -size -64M -exec cp -t "$keep" {} + 2>/dev/null
    echo "test files kept in $keep" >&2
  fi
  rm -rf "$T"
}
trap keep_on_failure EXIT
VM_TIMEOUT=${EMBER_VM_TIMEOUT:-240}
# `timeout` sends SIGTERM first; an Ember that does not end on it is killed 15 s later, so a
# wedged VMM fails its test instead of hanging the run.
KILL_AFTER=15
# loglevel=4: only kernel errors reach the console, so warnings (e.g. the clocksource watchdog,
# common under nested TCG) cannot land in the middle of a guest's KEY=VALUE line.
BASE_ARGS="console=ttyS0 loglevel=4 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }
finish() { [[ $FAILS -eq 0 ]] && exit 0; echo "$FAILS check(s) failed" >&2; exit 1; }

need_guest() {
  [[ -f ${EMBER_KERNEL_DIR:-}/vmlinux && -f ${EMBER_KERNEL_DIR:-}/bzImage ]] || { echo "FAIL: EMBER_KERNEL_DIR has no vmlinux/bzImage (run scripts/test)" >&2; exit 1; }
  [[ -f ${EMBER_ROOTFS_DIR:-}/initrd.cpio.gz ]] || { echo "FAIL: EMBER_ROOTFS_DIR has no initrd.cpio.gz (run scripts/test)" >&2; exit 1; }
}

# write_config FILE KERNEL VCPUS MEM_MIB "GUEST COMMAND" [INITRD]
write_config() {
  local file=$1 kernel=$2 vcpus=$3 mem=$4 cmd=$5 initrd=${6:-$EMBER_ROOTFS_DIR/initrd.cpio.gz}
  [[ $cmd != *'"'* && $cmd != *' -- '* ]] || { echo "write_config: guest commands cannot contain double quotes or ' -- '" >&2; exit 2; }
  cmd=${cmd//\\/\\\\}
  cat > "$file" <<JSON
{
  "boot-source": {"kernel_image_path": "$kernel", "initrd_path": "$initrd",
                  "boot_args": "$BASE_ARGS -- $cmd"},
  "machine-config": {"vcpu_count": $vcpus, "mem_size_mib": $mem}
}
JSON
}

# run_ember NAME ARGS...: runs ember with a timeout; sets RC and leaves $T/NAME.out, $T/NAME.err.
run_ember() {
  local name=$1; shift
  timeout -k "$KILL_AFTER" "$VM_TIMEOUT" "$EMBER_BIN" "$@" < /dev/null > "$T/$name.out" 2> "$T/$name.err"
  RC=$?
  OUT=$T/$name.out ERR=$T/$name.err
}

# boot NAME KERNEL VCPUS MEM "CMD" [EXTRA EMBER ARGS...]
boot() {
  local name=$1 kernel=$2 vcpus=$3 mem=$4 cmd=$5; shift 5
  write_config "$T/$name.json" "$kernel" "$vcpus" "$mem" "$cmd"
  run_ember "$name" --no-api --config-file "$T/$name.json" "$@"
  if [[ $RC -ne 0 ]]; then
    fail "$name: ember exited with $RC"; echo "--- stderr:" >&2; tail -n 20 "$ERR" >&2; echo "--- console (tail):" >&2; tail -n 30 "$OUT" >&2
  fi
}

# guest_value KEY: the value the guest printed as KEY=VALUE on the console.
guest_value() { tr -d '\r' < "$OUT" | sed -n "s/^$1=//p" | tail -n 1; }

expect_eq() { if [[ "$2" == "$3" ]]; then pass "$1 ($2)"; else fail "$1: expected '$3', got '$2'"; fi; }

# interactive_start NAME CONFIG: Ember on CONFIG (a guest with no command: a shell on its
# console) with a FIFO as stdin, written through fd 3 of this shell. Input sent before the shell
# opened the console may be flushed or lost, so a probe line is repeated until the guest answers
# MARK=42. The caller then writes more lines to fd 3 and calls interactive_end.
interactive_start() {
  local name=$1 config=$2
  mkfifo "$T/$name.in"
  timeout -k "$KILL_AFTER" "$VM_TIMEOUT" "$EMBER_BIN" --no-api --config-file "$config" < "$T/$name.in" > "$T/$name.out" 2> "$T/$name.err" &
  IA_PID=$!
  exec 3> "$T/$name.in"
  OUT=$T/$name.out
  for _ in $(seq 1 120); do
    grep -q 'MARK=42' "$OUT" 2>/dev/null && break
    kill -0 "$IA_PID" 2>/dev/null || break
    if grep -q EMBER_GUEST_INIT "$OUT" 2>/dev/null; then printf 'echo MARK=$((6*7))\n' >&3; fi
    sleep 1
  done
  grep -q 'MARK=42' "$OUT" && pass "guest shell evaluated host input" || { fail "no answer from the guest shell"; tail -n 20 "$OUT" >&2; }
}
# interactive_end: waits for Ember (the caller's last line ends the shell); sets RC.
interactive_end() {
  wait "$IA_PID"; RC=$?
  exec 3>&-
}

# --- A VM driven through the API socket $SOCK (set by the test; on /tmp, a tmpfs in L1) ---
# api METHOD PATH [BODY]: prints "BODY STATUS" (curl's body, a space, the HTTP status).
api() {
  local m=$1 p=$2 b=${3:-}
  if [[ -n $b ]]; then
    curl -s -m 20 --unix-socket "$SOCK" -X "$m" -H 'Content-Type: application/json' -d "$b" -w ' %{http_code}' "http://localhost$p"
  else
    curl -s -m 20 --unix-socket "$SOCK" -X "$m" -w ' %{http_code}' "http://localhost$p"
  fi
}
# expect_status NAME WANT METHOD PATH [BODY]: one check on the status; the answer is left in LAST.
expect_status() {
  local name=$1 want=$2; shift 2
  LAST=$(api "$@")
  [[ ${LAST##* } == "$want" ]] && pass "$name -> $want" || fail "$name: wanted $want, got '$LAST'"
}
# start_ember [EXTRA ARGS...]: Ember in the background on $SOCK (EMBER_PID; console in $OUT, by
# default $T/console.out; stdin from $EMBER_STDIN, by default /dev/null); ends the test if the
# socket does not appear within 10 s.
start_ember() {
  OUT=${EMBER_CONSOLE:-$T/console.out}
  "$EMBER_BIN" --api-sock "$SOCK" --level Info --log-path "$T/ember.log" "$@" < "${EMBER_STDIN:-/dev/null}" > "$OUT" 2> "$T/ember.err" &
  EMBER_PID=$!
  for _ in $(seq 1 100); do [[ -S $SOCK ]] && return 0; sleep 0.1; done
  fail "API socket never appeared"; cat "$T/ember.err" >&2; finish
}
# wait_line KEY TIMEOUT_S: waits for KEY=VALUE on $OUT; fails early if EMBER_PID ends.
wait_line() {
  for _ in $(seq 1 $(($2 * 5))); do
    [[ -n $(guest_value "$1") ]] && return 0
    kill -0 "$EMBER_PID" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}
# put_file SRC DEST MODE: copies SRC into the ext4 image $T/root.ext4 as DEST with MODE (octal,
# with the file type: 0100755).
put_file() {
  debugfs -w -R "write $1 $2" "$T/root.ext4" >/dev/null 2>&1 && debugfs -w -R "sif $2 mode $3" "$T/root.ext4" >/dev/null 2>&1 \
    || { fail "debugfs write $2"; finish; }
}
# wait_exit TIMEOUT_S: waits for EMBER_PID to end and sets RC (its status, or "timeout" after
# killing it).
wait_exit() {
  for _ in $(seq 1 $(($1 * 5))); do kill -0 "$EMBER_PID" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$EMBER_PID" 2>/dev/null; then kill -9 "$EMBER_PID"; RC=timeout; else wait "$EMBER_PID"; RC=$?; fi
}
