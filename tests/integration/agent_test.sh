#!/usr/bin/env bash
# The `ember run` guest agent on real KVM, before Ember's own `ember run` exists: the agent is
# PID 1 of an initramfs holding only it (tests/integration/agent_initrd.py), switches to the
# project's ext4 image (`ember.root=/dev/vda`), connects to <uds_path>_10789 where
# tests/integration/run_client.py listens, and runs one command. `agent_test.sh CASE`:
#   ext4: a command that writes 1 MiB of random bytes to stdout and their md5 to stderr and exits
#         7: the client gets both streams apart (md5 matches), status 7; Ember exits on its own
#         (the agent's reboot) and the console holds none of the command's output.
source "$(dirname "$0")/lib.sh"
need_guest
case_name=${1:?usage: agent_test.sh CASE}
AGENT=$(dirname "$EMBER_BIN")/ember-agent
[[ -x $AGENT ]] || { fail "no $AGENT (cmake --build build --target ember_agent)"; finish; }
python3 "$(dirname "$0")/agent_initrd.py" "$T/agent.cpio" "$AGENT" || { fail "agent initrd"; finish; }
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
UDS=$T/v.sock

case $case_name in
ext4)
  python3 "$(dirname "$0")/run_client.py" "$UDS" -- sh -c \
    'head -c 1048576 /dev/urandom > /tmp/r; md5sum < /tmp/r >&2; cat /tmp/r; exit 7' \
    > "$T/cmd.out" 2> "$T/cmd.err" < /dev/null &
  CLIENT=$!
  for _ in $(seq 1 50); do [[ -S ${UDS}_10789 ]] && break; sleep 0.1; done
  cat > "$T/vm.json" <<JSON
{
  "boot-source": {"kernel_image_path": "$EMBER_KERNEL_DIR/vmlinux", "initrd_path": "$T/agent.cpio",
                  "boot_args": "$BASE_ARGS ember.root=/dev/vda"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
  "drives": [{"drive_id": "root", "path_on_host": "$T/root.ext4", "is_root_device": false, "is_read_only": false}],
  "vsock": {"guest_cid": 3, "uds_path": "$UDS"}
}
JSON
  t0=$(date +%s.%N)
  run_ember vm --no-api --config-file "$T/vm.json"
  t1=$(date +%s.%N)
  wait "$CLIENT"; crc=$?
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "boot to exit: %.2f s\n", b - a }'
  [[ $RC -eq 0 ]] && pass "Ember exited on the agent's reboot" || { fail "ember status $RC"; tail -n 30 "$OUT" "$ERR" >&2; }
  expect_eq "command status through the agent" "$crc" 7
  expect_eq "stdout bytes" "$(stat -c %s "$T/cmd.out")" 1048576
  expect_eq "stderr holds stdout's md5" "$(awk '{print $1}' "$T/cmd.err")" "$(md5sum < "$T/cmd.out" | awk '{print $1}')"
  grep -q "$(awk '{print $1}' "$T/cmd.err")" "$OUT" && fail "command output on the console" || pass "console free of the command's streams"
  ;;
*) fail "unknown case $case_name" ;;
esac
finish
