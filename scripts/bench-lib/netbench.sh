#!/bin/sh
# Guest side of scripts/bench's virtio-net figures, appended to the initrd as /bin/netbench by
# scripts/bench-lib/measure.py (the kernel command line is too short for it). Usage: netbench MIB
# The host side (measure.py, in a network namespace of its own) owns 172.16.0.1 on the TAP.
#   1. eth0 gets 172.16.0.2/24; NET_READY=1 on the console.
#   2. The host pings us while nc waits in accept(); then it connects to port 5001 and sends MIB
#      MiB. nc's stdin is a FIFO it holds open itself (<>), so it neither sends nor half-closes:
#      it exits when the host's data ends, and the host sees our FIN when all of it is read.
#   3. Bulk: we send MIB MiB of zeros from a file on the initramfs (written before NET_READY)
#      to the host's port 5002; nc half-closes at the file's end and exits when the host closes.
#   4. Small writes: the same again through a pipe (dd | nc). busybox nc then writes what each
#      read of the pipe gives it, a few KiB at a time, so the guest's TCP sends many small
#      segments unless it can merge them (autocorking waits for earlier segments still held by
#      the device): this measures the cost per packet more than the datapath.
mib=${1:-64}
ip addr add 172.16.0.2/24 dev eth0 || exit 10
ip link set eth0 up || exit 11
mkfifo /tmp/netbench-idle || exit 12
dd if=/dev/zero of=/tmp/netbench-tx bs=1M count="$mib" 2>/dev/null || exit 15
echo NET_READY=1
nc -l -p 5001 <>/tmp/netbench-idle >/dev/null || exit 13
echo NET_RX_DONE=1
nc 172.16.0.1 5002 </tmp/netbench-tx >/dev/null || exit 14
rm -f /tmp/netbench-tx
echo NET_TX_DONE=1
dd if=/dev/zero bs=1M count="$mib" 2>/dev/null | nc 172.16.0.1 5002 >/dev/null || exit 16
echo NET_TX_PIPE_DONE=1
