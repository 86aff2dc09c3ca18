#!/usr/bin/env bash
# virtio-blk on real KVM: `block_test.sh CASE`. The guest boots from a copy of the project's ext4
# rootfs as its root drive (root=/dev/vda) and works on its drives; the host then checks the
# image files themselves (debugfs reads ext4 images without mounting them).
source "$(dirname "$0")/lib.sh"
need_guest
K=$EMBER_KERNEL_DIR
case_name=${1:?usage: block_test.sh CASE}
[[ -f $EMBER_ROOTFS_DIR/rootfs.ext4 ]] || { echo "FAIL: EMBER_ROOTFS_DIR has no rootfs.ext4" >&2; exit 1; }
cp "$EMBER_ROOTFS_DIR/rootfs.ext4" "$T/root.ext4"
BLK_ARGS="console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"

# drive ID PATH ROOT RO [ENGINE] [CACHE] -> one JSON drive object
drive() {
  printf '{"drive_id": "%s", "path_on_host": "%s", "is_root_device": %s, "is_read_only": %s, "io_engine": "%s", "cache_type": "%s"}' \
    "$1" "$2" "$3" "$4" "${5:-Async}" "${6:-Unsafe}"
}
# write_block_config FILE VCPUS MEM "CMD" DRIVE_JSON... (no initrd: the root drive holds /init)
write_block_config() {
  local file=$1 vcpus=$2 mem=$3 cmd=$4; shift 4
  [[ $cmd != *'"'* && $cmd != *' -- '* ]] || { echo "guest commands cannot contain double quotes or ' -- '" >&2; exit 2; }
  local drives; drives=$(IFS=,; echo "$*")
  cat > "$file" <<JSON
{
  "boot-source": {"kernel_image_path": "$K/vmlinux", "boot_args": "$BLK_ARGS -- $cmd"},
  "machine-config": {"vcpu_count": $vcpus, "mem_size_mib": $mem},
  "drives": [$drives]
}
JSON
}
# boot_block NAME VCPUS MEM "CMD" DRIVE_JSON...
boot_block() {
  local name=$1 vcpus=$2 mem=$3 cmd=$4; shift 4
  write_block_config "$T/$name.json" "$vcpus" "$mem" "$cmd" "$@"
  run_ember "$name" --no-api --config-file "$T/$name.json"
  if [[ $RC -ne 0 ]]; then
    fail "$name: ember exited with $RC"; echo "--- stderr:" >&2; tail -n 20 "$ERR" >&2; echo "--- console (tail):" >&2; tail -n 30 "$OUT" >&2
  fi
}
# put_script TEXT: stores TEXT as /t.sh in the root image; the guest command is then `sh /t.sh`.
# Linux hands init at most 32 arguments, so longer guest programs travel this way.
put_script() {
  printf '%s\n' "$1" > "$T/t.sh"
  debugfs -w -R "write $T/t.sh /t.sh" "$T/root.ext4" >/dev/null 2>&1 || { fail "debugfs write /t.sh"; finish; }
}
# image_file_md5 IMAGE PATH: md5 of a file inside an ext4 image, read by the host.
image_file_md5() {
  rm -f "$T/dump.bin"
  debugfs -R "dump $2 $T/dump.bin" "$1" >/dev/null 2>&1 && md5sum < "$T/dump.bin" | cut -c1-32
}
# A blank ext4 data disk of N MiB holding hello.txt.
make_data_disk() { # PATH MIB
  mkdir -p "$T/datatree"; echo "hello from the host" > "$T/datatree/hello.txt"
  mkfs.ext4 -q -F -b 4096 -d "$T/datatree" "$1" "$2M" >/dev/null 2>&1 || { fail "mkfs.ext4 $1"; finish; }
}

# Writes 64 MiB of random data on the root filesystem, syncs, drops the page cache, reads it
# back: SUM1 (as written) and SUM2 (as read back from the disk) must agree.
DATA_CMD='dd if=/dev/urandom of=/data.bin bs=1M count=64 2>/dev/null; sync; echo SUM1=$(md5sum /data.bin | cut -c1-32); echo 3 > /proc/sys/vm/drop_caches; echo SUM2=$(md5sum /data.bin | cut -c1-32); echo ROOT=$(grep /dev/root /proc/mounts | cut -d, -f1)'

data_roundtrip() { # ENGINE CACHE
  boot_block data 1 256 "$DATA_CMD" "$(drive rootfs "$T/root.ext4" true false "$1" "$2")"
  local s1 s2 host
  s1=$(guest_value SUM1) s2=$(guest_value SUM2)
  [[ ${#s1} -eq 32 ]] && pass "$1/$2: guest wrote 64 MiB (md5 $s1)" || fail "$1/$2: no checksum from the guest"
  expect_eq "$1/$2: read back after dropping caches" "$s2" "$s1"
  expect_eq "$1/$2: root mounted read-write from vda" "$(guest_value ROOT)" "/dev/root / ext4 rw"
  host=$(image_file_md5 "$T/root.ext4" /data.bin)
  expect_eq "$1/$2: host reads the same bytes from the image" "$host" "$s1"
  expect_eq "$1/$2: guest command status" "$(guest_value EMBER_EXIT_STATUS)" 0
  e2fsck -n -f "$T/root.ext4" >/dev/null 2>&1 && pass "$1/$2: image passes e2fsck" || fail "$1/$2: e2fsck found errors"
}

case $case_name in
data_async)
  data_roundtrip Async Writeback
  ;;
data_sync)
  data_roundtrip Sync Unsafe
  ;;
read_only)
  make_data_disk "$T/ro.ext4" 16
  before=$(sha256sum < "$T/ro.ext4")
  put_script 'echo RO=$(cat /sys/block/vdb/ro)
mkdir -p /mnt
mount -o ro /dev/vdb /mnt
echo HELLO=$(cat /mnt/hello.txt | tr -c a-z _)
umount /mnt
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then echo RAW_WRITE=accepted; else echo RAW_WRITE=refused; fi
if mount /dev/vdb /mnt 2>/dev/null; then touch /mnt/x 2>/dev/null && echo RW_MOUNT=writable || echo RW_MOUNT=readonly; else echo RW_MOUNT=refused; fi'
  boot_block ro 1 256 "sh /t.sh" "$(drive rootfs "$T/root.ext4" true false)" "$(drive ro "$T/ro.ext4" false true Sync)"
  expect_eq "guest sees vdb read-only" "$(guest_value RO)" 1
  expect_eq "guest reads the host's file" "$(guest_value HELLO)" "hello_from_the_host_"
  expect_eq "raw write to the read-only disk" "$(guest_value RAW_WRITE)" refused
  rw=$(guest_value RW_MOUNT)
  [[ $rw == refused || $rw == readonly ]] && pass "read-write mount cannot write ($rw)" || fail "read-write mount: '$rw'"
  expect_eq "read-only image unchanged" "$(sha256sum < "$T/ro.ext4")" "$before"
  ;;
four_drives)
  # Root plus three raw disks with host-known contents, mixed engines; the guest checks serials
  # (GET_ID = drive id), sizes, and reads every disk whole.
  head -c $((3 * 1024 * 1024)) /dev/urandom > "$T/d1.img"
  head -c $((5 * 1024 * 1024)) /dev/urandom > "$T/d2.img"
  head -c $((1024 * 1024 + 512)) /dev/urandom > "$T/d3.img"
  cmd='for d in vdb vdc vdd; do echo SERIAL_$d=$(cat /sys/block/$d/serial); echo SECTORS_$d=$(cat /sys/block/$d/size); echo MD5_$d=$(md5sum /dev/$d | cut -c1-32); done; echo DISKS=$(ls /sys/block | grep -c vd)'
  boot_block four 2 256 "$cmd" "$(drive rootfs "$T/root.ext4" true false Async)" "$(drive disk_one "$T/d1.img" false false Sync)" \
    "$(drive disk_two "$T/d2.img" false true Async)" "$(drive disk_three "$T/d3.img" false false Async Writeback)"
  expect_eq "guest has four virtio disks" "$(guest_value DISKS)" 4
  i=1
  for d in vdb vdc vdd; do
    img=$T/d$i.img id=$(case $i in 1) echo disk_one ;; 2) echo disk_two ;; 3) echo disk_three ;; esac)
    expect_eq "$d serial" "$(guest_value SERIAL_$d)" "$id"
    expect_eq "$d sectors" "$(guest_value SECTORS_$d)" "$(($(stat -c %s "$img") / 512))"
    expect_eq "$d contents" "$(guest_value MD5_$d)" "$(md5sum < "$img" | cut -c1-32)"
    i=$((i + 1))
  done
  ;;
rebind)
  # Unbinding and binding the virtio driver resets the device (status 0) and initialises it again.
  make_data_disk "$T/data.ext4" 32
  put_script 'echo BEFORE=$(md5sum /dev/vdb | cut -c1-32)
for i in 1 2 3; do
  echo virtio1 > /sys/bus/virtio/drivers/virtio_blk/unbind
  echo virtio1 > /sys/bus/virtio/drivers/virtio_blk/bind
done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vdb ] && break; sleep 0.5; done
echo AFTER=$(md5sum /dev/vdb | cut -c1-32)
mkdir -p /mnt
mount /dev/vdb /mnt && echo written-after-rebind > /mnt/new.txt && umount /mnt && echo WRITE=ok'
  boot_block rebind 1 256 "sh /t.sh" "$(drive rootfs "$T/root.ext4" true false)" "$(drive data "$T/data.ext4" false false Async Writeback)"
  before=$(guest_value BEFORE)
  [[ ${#before} -eq 32 ]] && pass "vdb read before rebinding" || fail "vdb not read before rebinding"
  expect_eq "vdb reads the same after three unbind/bind cycles" "$(guest_value AFTER)" "$before"
  expect_eq "vdb writable after rebinding" "$(guest_value WRITE)" ok
  rm -f "$T/dump.bin"; debugfs -R "dump /new.txt $T/dump.bin" "$T/data.ext4" >/dev/null 2>&1
  expect_eq "host sees the file written after rebinding" "$(cat "$T/dump.bin" 2>/dev/null)" written-after-rebind
  ;;
sigkill)
  # Durability: what the guest synced is in the image even when Ember dies at once.
  cmd='dd if=/dev/urandom of=/synced.bin bs=1M count=8 2>/dev/null; sync; echo SYNCED=$(md5sum /synced.bin | cut -c1-32); sleep 600'
  write_block_config "$T/kill.json" 1 256 "$cmd" "$(drive rootfs "$T/root.ext4" true false Async Writeback)"
  "$EMBER_BIN" --no-api --config-file "$T/kill.json" < /dev/null > "$T/kill.out" 2> "$T/kill.err" &
  pid=$!
  OUT=$T/kill.out
  for _ in $(seq 1 $((VM_TIMEOUT * 5))); do [[ -n $(guest_value SYNCED) ]] && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
  synced=$(guest_value SYNCED)
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  [[ ${#synced} -eq 32 ]] && pass "guest synced 8 MiB (md5 $synced)" || { fail "guest never reported SYNCED"; tail -n 20 "$T/kill.out" "$T/kill.err" >&2; }
  # The guest never unmounted: replay the ext4 journal on the host first, as the next boot would.
  e2fsck -fy "$T/root.ext4" >/dev/null 2>&1; rc=$?
  [[ $rc -le 1 ]] && pass "image recovers with e2fsck (status $rc)" || fail "e2fsck on the killed image: status $rc"
  expect_eq "synced data is in the image after SIGKILL" "$(image_file_md5 "$T/root.ext4" /synced.bin)" "$synced"
  ;;
cache_modes)
  # Writeback offers VIRTIO_BLK_F_FLUSH (the guest sees a volatile write cache); Unsafe does not.
  cp "$T/root.ext4" "$T/second.ext4"
  cmd='echo WC_vda=$(cat /sys/block/vda/queue/write_cache | tr -c a-z _); echo WC_vdb=$(cat /sys/block/vdb/queue/write_cache | tr -c a-z _)'
  boot_block cache 1 128 "$cmd" "$(drive rootfs "$T/root.ext4" true false Async Writeback)" "$(drive second "$T/second.ext4" false false Async Unsafe)"
  expect_eq "Writeback drive has a write-back cache" "$(guest_value WC_vda)" "write_back_"
  expect_eq "Unsafe drive is write-through" "$(guest_value WC_vdb)" "write_through_"
  ;;
*) echo "unknown case $case_name" >&2; exit 2 ;;
esac
finish
