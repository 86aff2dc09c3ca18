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
  # interrupt.
  write_config "$T/ia.json" "$K/vmlinux" 1 128 ''
  sed -i 's/ -- "/"/' "$T/ia.json"
  interactive_start ia "$T/ia.json"
  # More than the 64-byte receive FIFO in one write: the rest waits for the guest to drain it.
  long=$(seq -s- 1 250)
  printf 'echo LONG1=%s\necho LONG2=%s\n' "$long" "$long" >&3
  printf 'exit 3\n' >&3
  interactive_end
  for k in 1 2; do expect_eq "long input line $k arrived intact" "$(guest_value LONG$k)" "$long"; done
  expect_eq "shell exit status" "$(guest_value EMBER_EXIT_STATUS)" 3
  expect_eq "ember status" "$RC" 0
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
