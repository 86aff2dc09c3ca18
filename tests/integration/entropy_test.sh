#!/usr/bin/env bash
# virtio-rng (PUT /entropy, the config file's "entropy" section) on real KVM:
# `entropy_test.sh CASE`. The guest reads 64 KiB from /dev/hwrng and reports which hwrng the
# kernel picked, how many distinct byte values came and how well they compress.
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: entropy_test.sh CASE}

# The guest side: hw_random's current source, then 64 KiB from it (head loops over the short
# reads /dev/hwrng may give). Random bytes take all 256 values and do not compress; zeros would
# give 1 value and ~100 bytes of gzip. Written densely: the kernel passes init at most 32
# arguments, split at spaces.
RNG_CMD='cd /tmp;head -c 65536 /dev/hwrng >r;echo RNG=$(cat /sys/class/misc/hw_random/rng_current);echo SIZE=$(wc -c <r);echo DISTINCT=$(od -An -v -tu1 -w1 r|sort -u|wc -l);echo GZ=$(gzip -c r|wc -c)'

# The guest side of `ratelimit`: 50 kB from /dev/hwrng between two reads of /proc/uptime (the
# values printed are "UPTIME IDLE"; the test takes the first word).
RL_CMD='cd /tmp;a=$(cat /proc/uptime);head -c 50000 /dev/hwrng >r;b=$(cat /proc/uptime);echo T0=$a;echo T1=$b;echo SIZE=$(wc -c <r)'

# with_sections FILE KEY=JSON...: adds top-level sections to a config file.
with_sections() {
  local file=$1; shift
  python3 - "$file" "$@" <<'PY'
import json, sys
path, extra = sys.argv[1], sys.argv[2:]
c = json.load(open(path))
for kv in extra:
    k, v = kv.split("=", 1)
    c[k] = json.loads(v)
json.dump(c, open(path, "w"))
PY
}
# metric GROUP NAME: the sum of a counter over every line of $T/metrics.json.
metric() {
  python3 - "$T/metrics.json" "$1" "$2" <<'PY'
import json, sys
print(sum(json.loads(l).get(sys.argv[2], {}).get(sys.argv[3], 0) for l in open(sys.argv[1]) if l.strip()))
PY
}
# check_random: the guest's report of a virtio-rng source with 64 KiB of random bytes.
check_random() {
  expect_eq "hw_random source" "$(guest_value RNG)" virtio_rng.0
  expect_eq "bytes read from /dev/hwrng" "$(guest_value SIZE)" 65536
  expect_eq "distinct byte values" "$(guest_value DISTINCT)" 256
  local gz; gz=$(guest_value GZ)
  [[ -n $gz && $gz -ge 65536 ]] && pass "64 KiB do not compress ($gz bytes of gzip)" || fail "gzip size '$gz' < 65536: not random"
}

case $case_name in
hwrng)
  # The config file's "entropy" section; the metrics count at least the bytes the guest read.
  write_config "$T/vm.json" "$K/vmlinux" 1 256 "$RNG_CMD"
  with_sections "$T/vm.json" 'entropy={"rate_limiter": null}' "metrics={\"metrics_path\": \"$T/metrics.json\"}"
  run_ember vm --no-api --config-file "$T/vm.json"
  expect_eq "ember status" "$RC" 0
  check_random
  bytes=$(metric entropy entropy_bytes)
  [[ $bytes -ge 65536 ]] && pass "entropy.entropy_bytes $bytes >= 65536" || fail "entropy.entropy_bytes $bytes < 65536"
  [[ $(metric entropy entropy_event_count) -ge 1 ]] && pass "entropy requests counted" || fail "entropy_event_count is 0"
  expect_eq "no failed requests" "$(metric entropy entropy_event_fails)" 0
  expect_eq "no host failures" "$(metric entropy host_rng_fails)" 0
  ;;
absent)
  # Without the section there is no virtio-rng: the guest has no hwrng, and the (always
  # present) entropy metrics stay 0.
  write_config "$T/vm.json" "$K/vmlinux" 1 256 'echo RNG=$(cat /sys/class/misc/hw_random/rng_current); echo DEV=$(ls /sys/bus/virtio/drivers/virtio_rng 2>/dev/null | grep -c virtio)'
  with_sections "$T/vm.json" "metrics={\"metrics_path\": \"$T/metrics.json\"}"
  run_ember vm --no-api --config-file "$T/vm.json"
  expect_eq "ember status" "$RC" 0
  expect_eq "hw_random source" "$(guest_value RNG)" none
  expect_eq "virtio_rng devices" "$(guest_value DEV)" 0
  expect_eq "entropy_bytes" "$(metric entropy entropy_bytes)" 0
  ;;
api)
  # PUT /entropy through the API: refusals change nothing, GET /vm/config shows it, it is
  # pre-boot only, and the guest gets its bytes.
  SOCK=$T/api.sock
  start_ember --metrics-path "$T/metrics.json"
  expect_status "GET /vm/config" 200 GET /vm/config ''
  [[ $LAST == *'"entropy":null'* ]] && pass "no entropy device before PUT" || fail "vm/config: $LAST"
  expect_status "PUT /entropy unknown field" 400 PUT /entropy '{"rate": 1}'
  [[ $LAST == *'unknown field'* ]] && pass "unknown field named" || fail "unknown field: $LAST"
  expect_status "PUT /entropy bad rate limiter" 400 PUT /entropy '{"rate_limiter": {"bandwidth": {"size": 1000}}}'
  [[ $LAST == *'entropy.rate_limiter.bandwidth: missing required field'* ]] && pass "rate limiter refusal explained" || fail "rate limiter: $LAST"
  expect_status "GET /entropy" 400 GET /entropy ''
  expect_status "GET /vm/config after refusals" 200 GET /vm/config ''
  [[ $LAST == *'"entropy":null'* ]] && pass "refusals configured nothing" || fail "vm/config: $LAST"
  expect_status "PUT /entropy" 204 PUT /entropy '{}'
  expect_status "PUT /entropy again" 204 PUT /entropy '{"rate_limiter": null}'
  expect_status "GET /vm/config with entropy" 200 GET /vm/config ''
  [[ $LAST == *'"entropy":{"rate_limiter":null}'* ]] && pass "vm/config shows the entropy device" || fail "vm/config: $LAST"
  expect_status "PUT /boot-source" 204 PUT /boot-source \
    "{\"kernel_image_path\": \"$K/vmlinux\", \"initrd_path\": \"$EMBER_ROOTFS_DIR/initrd.cpio.gz\", \"boot_args\": \"$BASE_ARGS -- $RNG_CMD; sleep 1\"}"
  expect_status "InstanceStart" 204 PUT /actions '{"action_type": "InstanceStart"}'
  expect_status "PUT /entropy after start" 400 PUT /entropy '{}'
  [[ $LAST == *'not supported after starting'* ]] && pass "pre-boot only" || fail "after start: $LAST"
  wait_exit 180
  expect_eq "ember status" "$RC" 0
  check_random
  expect_eq "put_api_requests.entropy_count" "$(metric put_api_requests entropy_count)" 3
  expect_eq "put_api_requests.entropy_fails" "$(metric put_api_requests entropy_fails)" 3
  bytes=$(metric entropy entropy_bytes)
  [[ $bytes -ge 65536 ]] && pass "entropy.entropy_bytes $bytes >= 65536" || fail "entropy.entropy_bytes $bytes < 65536"
  ;;
ratelimit)
  # rate_limiter.bandwidth 1000 bytes per 100 ms (10 kB/s, starting with 1000): 50 kB cannot be
  # read in less than (50000 - 1000) / 10000 = 4.9 s (the kernel's own hwrng reader only adds to
  # what is consumed). The same read without the limiter, in another VM, is the comparison.
  # Only the lower bound the limiter guarantees and the ratio are asserted, no upper time.
  elapsed() { python3 -c 'import sys; print(f"{float(sys.argv[2].split()[0]) - float(sys.argv[1].split()[0]):.2f}")' "$(guest_value T0)" "$(guest_value T1)"; }
  write_config "$T/free.json" "$K/vmlinux" 1 256 "$RL_CMD"
  with_sections "$T/free.json" 'entropy={}'
  run_ember free --no-api --config-file "$T/free.json"
  expect_eq "unlimited: ember status" "$RC" 0
  expect_eq "unlimited: bytes read" "$(guest_value SIZE)" 50000
  free_s=$(elapsed)
  write_config "$T/vm.json" "$K/vmlinux" 1 256 "$RL_CMD"
  with_sections "$T/vm.json" 'entropy={"rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}' \
    "metrics={\"metrics_path\": \"$T/metrics.json\"}"
  run_ember vm --no-api --config-file "$T/vm.json"
  expect_eq "limited: ember status" "$RC" 0
  expect_eq "limited: bytes read" "$(guest_value SIZE)" 50000
  limited_s=$(elapsed)
  echo "50 kB from /dev/hwrng: ${free_s} s unlimited, ${limited_s} s at 10 kB/s"
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 4.0 else 1)' "$limited_s" \
    && pass "limited read took ${limited_s} s >= 4.0 s (bound 4.9 s)" || fail "limited read took ${limited_s} s < 4.0 s"
  python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= 2 * float(sys.argv[2]) else 1)' "$limited_s" "$free_s" \
    && pass "limited ${limited_s} s >= 2 x unlimited ${free_s} s" || fail "limited ${limited_s} s < 2 x unlimited ${free_s} s"
  [[ $(metric entropy entropy_rate_limiter_throttled) -ge 1 ]] && pass "throttled requests counted" || fail "entropy_rate_limiter_throttled is 0"
  [[ $(metric entropy rate_limiter_event_count) -ge 1 ]] && pass "limiter timer events counted" || fail "rate_limiter_event_count is 0"
  bytes=$(metric entropy entropy_bytes)
  [[ $bytes -ge 50000 ]] && pass "entropy.entropy_bytes $bytes >= 50000" || fail "entropy.entropy_bytes $bytes < 50000"
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
