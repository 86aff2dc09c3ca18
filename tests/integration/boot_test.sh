#!/usr/bin/env bash
# Real-KVM boot tests: `boot_test.sh CASE`. Each case boots the project's guest kernel with the
# busybox initrd, runs a command in the guest and checks what comes back.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: boot_test.sh CASE}

check_cpus() { # NAME EXPECTED_COUNT EXPECTED_ONLINE
  expect_eq "$1: guest nproc" "$(guest_value NPROC)" "$2"
  expect_eq "$1: guest cpu online" "$(guest_value ONLINE)" "$3"
  expect_eq "$1: guest command status" "$(guest_value EMBER_EXIT_STATUS)" 0
}
# Guest commands travel in JSON and on the kernel command line, which strips double quotes and
# ends init's arguments at a second "--": they use neither.
CPU_CMD='echo NPROC=$(nproc); echo ONLINE=$(cat /sys/devices/system/cpu/online)'
MEM_CMD='grep MemTotal /proc/meminfo | { read k v u; echo MEMKB=$v; }'

case $case_name in
vmlinux_pvh_1cpu)
  boot pvh1 "$K/vmlinux" 1 256 "$CPU_CMD; echo UNAME=\$(uname -sr)"
  check_cpus pvh1 1 0
  [[ $(guest_value UNAME) == "Linux 6.1."* ]] && pass "guest uname reached the host: $(guest_value UNAME)" || fail "guest uname missing"
  ;;
bzimage_2cpu)
  boot bz2 "$K/bzImage" 2 256 "$CPU_CMD"
  check_cpus bz2 2 0-1
  ;;
vmlinux_4cpu)
  boot pvh4 "$K/vmlinux" 4 256 "$CPU_CMD"
  check_cpus pvh4 4 0-3
  ;;
bzimage_4cpu)
  boot bz4 "$K/bzImage" 4 256 "$CPU_CMD"
  check_cpus bz4 4 0-3
  ;;
mem_128)
  boot m128 "$K/vmlinux" 1 128 "$MEM_CMD"
  kb=$(guest_value MEMKB)
  # MemTotal excludes the kernel image and reserved pages: expect 75-100% of 128 MiB.
  [[ -n $kb && $kb -gt $((128 * 1024 * 75 / 100)) && $kb -le $((128 * 1024)) ]] && pass "MemTotal $kb kB for 128 MiB" || fail "MemTotal '$kb' kB for 128 MiB"
  ;;
mem_1024)
  boot m1024 "$K/bzImage" 2 1024 "$MEM_CMD"
  kb=$(guest_value MEMKB)
  [[ -n $kb && $kb -gt $((1024 * 1024 * 90 / 100)) && $kb -le $((1024 * 1024)) ]] && pass "MemTotal $kb kB for 1024 MiB" || fail "MemTotal '$kb' kB for 1024 MiB"
  ;;
exit_status)
  # The guest command's status reaches the host console; the guest's reboot ends Ember with 0.
  boot status "$K/vmlinux" 1 128 'echo to-stdout; echo to-stderr >&2; exit 7'
  expect_eq "guest command status" "$(guest_value EMBER_EXIT_STATUS)" 7
  tr -d '\r' < "$OUT" | grep -q '^to-stdout' && pass "guest stdout on console" || fail "guest stdout missing"
  tr -d '\r' < "$OUT" | grep -q '^to-stderr' && pass "guest stderr on console" || fail "guest stderr missing"
  expect_eq "ember status after guest reboot" "$RC" 0
  ;;
boot_timer)
  boot timer "$K/vmlinux" 1 128 'true' --boot-timer --level Info
  grep -E -q 'Guest-boot-time = +[0-9]+ us [0-9]+ ms, +[0-9]+ CPU us [0-9]+ CPU ms' "$ERR" && pass "boot-timer line: $(grep -o 'Guest-boot-time.*' "$ERR")" || fail "no Guest-boot-time line in stderr"
  boot notimer "$K/vmlinux" 1 128 'true' --level Info
  grep -q 'Guest-boot-time' "$ERR" && fail "boot-timer line without --boot-timer" || pass "no boot-timer line without --boot-timer"
  ;;
log_file)
  boot logf "$K/vmlinux" 1 128 'true' --boot-timer --level Info --show-level --log-path "$T/ember.log" --id it-logf
  grep -E -q '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+ \[it-logf:ember_vcpu0:INFO\] Guest-boot-time' "$T/ember.log" && pass "Firecracker-format log line in --log-path" || { fail "log file lacks the boot-timer line"; cat "$T/ember.log" >&2; }
  ;;
triple_fault)
  # An ELF whose entry executes ud2 with an empty IDT: #UD -> #DF -> triple fault.
  python3 - "$T/ud2.elf" <<'PY'
import struct, sys
code = b"\x0f\x0b" * 8
ph_off, load = 64, 0x100000
data_off = ph_off + 56
ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, load, ph_off, 0, 0, 64, 56, 1, 0, 0, 0)
phdr = struct.pack("<IIQQQQQQ", 1, 5, data_off, load, load, len(code), len(code), 0x1000)
open(sys.argv[1], "wb").write(ehdr + phdr + code)
PY
  write_config "$T/tf.json" "$T/ud2.elf" 1 64 'true'
  run_ember tf --no-api --config-file "$T/tf.json"
  [[ $RC -ne 0 && $RC -ne 124 ]] && pass "triple fault ends Ember with status $RC" || fail "triple fault: status $RC"
  grep -q 'triple fault' "$ERR" && pass "error names the triple fault" || fail "no triple-fault message: $(cat "$ERR")"
  # On AMD, KVM re-initialises the VMCB after a shutdown intercept, so the dump shows the reset
  # state rather than the faulting rip; check that a full dump is there.
  grep -E -q 'rip=0x[0-9a-f]+ rsp=0x[0-9a-f]+ .*cr0=0x[0-9a-f]+ .*efer=' "$ERR" && pass "register dump on stderr" || fail "no register dump: $(cat "$ERR")"
  ;;
interactive_console)
  # No command: the guest runs a shell on ttyS0. Host input goes through the UART's RX FIFO and
  # interrupt. Input sent before the shell opened the console would be flushed by the 8250
  # driver's start-up, so the probe line is repeated until the guest answers.
  write_config "$T/ia.json" "$K/vmlinux" 1 128 ''
  sed -i 's/ -- "/"/' "$T/ia.json"
  mkfifo "$T/ia.in"
  timeout -k "$KILL_AFTER" "$VM_TIMEOUT" "$EMBER_BIN" --no-api --config-file "$T/ia.json" < "$T/ia.in" > "$T/ia.out" 2> "$T/ia.err" &
  pid=$!
  exec 3> "$T/ia.in"
  for _ in $(seq 1 120); do
    grep -q 'MARK=42' "$T/ia.out" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    if grep -q EMBER_GUEST_INIT "$T/ia.out" 2>/dev/null; then printf 'echo MARK=$((6*7))\n' >&3; fi
    sleep 1
  done
  printf 'exit 3\n' >&3
  wait "$pid"; RC=$?
  exec 3>&-
  OUT=$T/ia.out
  grep -q 'MARK=42' "$OUT" && pass "guest shell evaluated host input" || { fail "no answer from the guest shell"; tail -n 20 "$OUT" >&2; }
  expect_eq "shell exit status" "$(guest_value EMBER_EXIT_STATUS)" 3
  expect_eq "ember status" "$RC" 0
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
