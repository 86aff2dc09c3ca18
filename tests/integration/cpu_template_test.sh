#!/usr/bin/env bash
# CPU templates on real KVM, checked from the guest's /proc/cpuinfo: `cpu_template_test.sh CASE`.
# The nested L1 (scripts/nested-kvm) is QEMU TCG `-cpu max`, an AMD CPU: T2A applies there, the
# Intel-only templates are refused.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: cpu_template_test.sh CASE}
SOCK=$T/api.sock

# The guest prints its CPU flags, family and model on one line each.
FLAGS_CMD='echo FLAGS=$(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2); echo FAMILY=$(grep -m1 family /proc/cpuinfo | cut -d: -f2); echo MODEL=$(grep -m1 ^model /proc/cpuinfo | cut -d: -f2)'
# Flags T2A masks (Firecracker's t2a.rs): leaf 1 ECX MONITOR, EDX SS; leaf 7 EBX RDSEED, ADX,
# CLFLUSHOPT, CLWB, SHA; ECX UMIP, RDPID; 0xd.1 XSAVEC, XGETBV1; 0x80000001 ECX SVM, SSE4A,
# MisAlignSse; EDX MmxExt, FFXSR, Page1GB; 0x80000008 EBX CLZERO, WBNOINVD. Measured in L1 (QEMU
# 7.2 "max", kvm-amd): the baseline guest shows ss mmxext pdpe1gb svm sse4a adx clflushopt clwb
# umip. Only those seen in the baseline boot are required to vanish, and at least MIN_MASKED of
# them must be seen. 3dnowprefetch is left out: T2A clears its CPUID bit, but Linux sets the flag
# again on any AMD CPU with long mode (arch/x86/kernel/cpu/amd.c, init_amd).
T2A_MASKED="ss mmxext pdpe1gb svm sse4a misalignsse fxsr_opt rdseed adx clflushopt clwb sha_ni umip rdpid xsavec xgetbv1 monitor clzero wbnoinvd"
MIN_MASKED=6
# Flags T2A keeps: they must stay.
KEPT="fpu sse2 lm"

has_flag() { [[ " $1 " == *" $2 "* ]]; }
flags() { guest_value FLAGS; }

with_template() { # CONFIG_FILE TEMPLATE_NAME: adds machine-config.cpu_template
  python3 - "$1" "$2" <<'PY'
import json, sys
p, t = sys.argv[1], sys.argv[2]
c = json.load(open(p))
c["machine-config"]["cpu_template"] = t
json.dump(c, open(p, "w"))
PY
}

configure_guest() { # machine-config body
  expect_status "PUT /boot-source" 204 PUT /boot-source \
    "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$BASE_ARGS -- $FLAGS_CMD\"}"
  expect_status "PUT /machine-config" 204 PUT /machine-config "$1"
}

case $case_name in
t2a)
  # The same guest without and with T2A: every masked flag it showed is gone, the others stay.
  boot base "$K/vmlinux" 1 256 "$FLAGS_CMD"
  base=$(flags)
  [[ -n $base ]] && pass "baseline flags: $base" || { fail "no FLAGS line from the baseline guest"; finish; }
  echo "baseline family $(guest_value FAMILY) model $(guest_value MODEL)"
  seen=""
  for f in $T2A_MASKED; do has_flag "$base" "$f" && seen="$seen $f"; done
  n=$(wc -w <<< "$seen")
  [[ $n -ge $MIN_MASKED ]] && pass "baseline shows $n flags T2A masks:$seen" || fail "baseline shows only $n flags T2A masks:$seen"

  write_config "$T/t2a.json" "$K/vmlinux" 1 256 "$FLAGS_CMD"
  with_template "$T/t2a.json" T2A
  run_ember t2a --no-api --config-file "$T/t2a.json" --level Info
  expect_eq "ember status with T2A" "$RC" 0
  # QEMU's "max" is no Milan: Firecracker would refuse T2A here (InvalidCpuModel); Ember warns.
  grep -q 'is not a model Firecracker lists for it' "$ERR" && pass "CPU model warning logged" || fail "no CPU model warning: $(tail -n 3 "$ERR")"
  got=$(flags)
  [[ -n $got ]] && pass "T2A flags: $got" || { fail "no FLAGS line from the T2A guest"; tail -n 20 "$ERR" >&2; finish; }
  for f in $seen; do has_flag "$got" "$f" && fail "T2A left '$f' visible" || pass "T2A hides $f"; done
  for f in $KEPT; do has_flag "$got" "$f" && pass "T2A keeps $f" || fail "T2A lost '$f'"; done
  # 0x80000008 EBX bit 2 (RstrFpErrPtrs) is one T2A sets: the guest gains xsaveerptr.
  has_flag "$base" xsaveerptr && fail "baseline already shows xsaveerptr" || pass "baseline lacks xsaveerptr"
  has_flag "$got" xsaveerptr && pass "T2A sets RstrFpErrPtrs (xsaveerptr)" || fail "T2A guest lacks xsaveerptr"
  # Leaf 1 EAX: family 6, model 0x3f (63), as Firecracker's T2A reports.
  expect_eq "T2A guest cpu family" "$(guest_value FAMILY | tr -d ' ')" 6
  expect_eq "T2A guest model" "$(guest_value MODEL | tr -d ' ')" 63
  ;;
intel_refused)
  # Intel-only templates on this AMD CPU: accepted by PUT, refused at InstanceStart with
  # Firecracker's message; the VM stays configurable and then boots without a template.
  grep -q AuthenticAMD /proc/cpuinfo || { fail "this case expects an AMD host CPU (L1 is QEMU max)"; finish; }
  start_ember
  configure_guest '{"vcpu_count": 1, "mem_size_mib": 256}'
  for t in T2 C3 T2S T2CL; do
    expect_status "PUT /machine-config $t" 204 PUT /machine-config "{\"vcpu_count\": 1, \"mem_size_mib\": 256, \"cpu_template\": \"$t\"}"
    expect_status "InstanceStart with $t" 400 PUT /actions '{"action_type": "InstanceStart"}'
    [[ $LAST == *'CPU vendor mismatched between actual CPU and CPU template.'* ]] && pass "$t refused with the vendor message" || fail "$t: $LAST"
  done
  expect_status "V1N1 on x86_64" 400 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": "V1N1"}'
  [[ $LAST == *V1N1* ]] && pass "V1N1 refusal names it" || fail "V1N1: $LAST"
  expect_status "GET /" 200 GET /
  [[ $LAST == *'"state":"Not started"'* ]] && pass "still Not started" || fail "state: $LAST"
  expect_status "GET /machine-config" 200 GET /machine-config
  [[ $LAST == *'"cpu_template":"T2CL"'* ]] && pass "template kept after the refusals" || fail "machine-config: $LAST"
  expect_status "cpu_template None" 204 PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256, "cpu_template": "None"}'
  expect_status "InstanceStart without a template" 204 PUT /actions '{"action_type": "InstanceStart"}'
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  [[ -n $(flags) ]] && pass "guest booted and reported its flags" || fail "no FLAGS from the guest"

  # --config-file with T2 fails before KVM, with the same message.
  write_config "$T/t2.json" "$K/vmlinux" 1 256 'true'
  with_template "$T/t2.json" T2
  run_ember t2 --no-api --config-file "$T/t2.json"
  [[ $RC -ne 0 ]] && pass "config file with T2 refused (status $RC)" || fail "config file with T2 booted"
  grep -q 'CPU vendor mismatched between actual CPU and CPU template.' "$ERR" && pass "vendor message on stderr" || fail "stderr: $(tail -n 3 "$ERR")"
  ;;
custom_api)
  # PUT /cpu-config clearing 0x80000001 ECX bit 6 (SSE4A) and leaf 7 EBX bit 19 (ADX): both gone
  # from the guest, the flags of the bits next to them (ABM bit 5, SMAP bit 20) stay.
  boot base "$K/vmlinux" 1 256 "$FLAGS_CMD"
  base=$(flags)
  for f in sse4a adx abm smap; do has_flag "$base" "$f" && pass "baseline shows $f" || fail "baseline lacks $f: $base"; done
  start_ember
  configure_guest '{"vcpu_count": 1, "mem_size_mib": 256}'
  expect_status "PUT /cpu-config bad register" 400 PUT /cpu-config \
    '{"cpuid_modifiers": [{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "exx", "bitmap": "0b0"}]}]}'
  [[ $LAST == *'Invalid CPUID register'* ]] && pass "bad register named" || fail "bad register: $LAST"
  expect_status "PUT /cpu-config bad bitmap" 400 PUT /cpu-config \
    '{"cpuid_modifiers": [{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0b2"}]}]}'
  CUSTOM='{"kvm_capabilities": ["1", "!136"], "cpuid_modifiers": [
    {"leaf": "0x80000001", "subleaf": "0x0", "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxxx"}]},
    {"leaf": "0x7", "subleaf": "0x0", "flags": 1, "modifiers": [{"register": "ebx", "bitmap": "0bxxxx_xxxx_xxxx_0xxx_xxxx_xxxx_xxxx_xxxx"}]}],
    "msr_modifiers": [{"addr": "0x10", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}'
  expect_status "PUT /cpu-config" 204 PUT /cpu-config "$CUSTOM"
  expect_status "GET /vm/config" 200 GET /vm/config
  [[ $LAST == *'"cpu-config"'* && $LAST == *'"leaf":"0x80000001"'* ]] && pass "vm/config shows the custom template" || fail "vm/config: $LAST"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  expect_status "PUT /cpu-config after start" 400 PUT /cpu-config '{}'
  wait_exit 120
  expect_eq "Ember status" "$RC" 0
  got=$(flags)
  [[ -n $got ]] && pass "custom template flags: $got" || { fail "no FLAGS from the guest"; tail -n 20 "$T/ember.err" >&2; finish; }
  for f in sse4a adx; do has_flag "$got" "$f" && fail "custom template left '$f'" || pass "custom template hides $f"; done
  for f in abm smap; do has_flag "$got" "$f" && pass "custom template keeps $f" || fail "custom template lost '$f'"; done

  # A custom template naming a leaf KVM does not report is refused at InstanceStart.
  start_ember
  configure_guest '{"vcpu_count": 1, "mem_size_mib": 256}'
  expect_status "PUT /cpu-config unknown leaf" 204 PUT /cpu-config \
    '{"cpuid_modifiers": [{"leaf": "0x4fffffff", "subleaf": "0x0", "flags": 0, "modifiers": []}]}'
  expect_status "InstanceStart unknown leaf" 400 PUT /actions '{"action_type": "InstanceStart"}'
  [[ $LAST == *'not supported by KVM: Leaf: 4fffffff'* ]] && pass "unsupported leaf named" || fail "unknown leaf: $LAST"
  kill -TERM "$EMBER_PID"; wait_exit 30
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
