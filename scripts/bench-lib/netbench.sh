#!/bin/sh
# Guest side of scripts/bench's virtio-net figures, appended to the initrd as /bin/netbench by
# scripts/bench-lib/measure.py (the kernel command line is too short for it). Usage: netbench MIB
# The host side (measure.py, in a network namespace of its own) owns 172.16.0.1 on the TAP.
#   1. eth0 gets 172.16.0.2/24; NET_READY=1 on the console.
#   2. The host pings us while nc waits in accept(); then it connects to port 5001 and sends MIB
#      MiB. nc's stdin is a FIFO it holds open itself (<>), so it neither sends nor half-closes:
#      it exits when the host's data ends, and the host sees our FIN when all of it is read.
#   3. We send MIB MiB of zeros to the host's port 5002; nc half-closes when dd ends and exits
#      when the host closes.
mib=${1:-64}
ip addr add 172.16.0.2/24 dev eth0 || exit 10
ip link set eth0 up || exit 11
mkfifo /tmp/netbench-idle || exit 12
echo NET_READY=1
nc -l -p 5001 <>/tmp/netbench-idle >/dev/null || exit 13
echo NET_RX_DONE=1
dd if=/dev/zero bs=1M count="$mib" 2>/dev/null | nc 172.16.0.1 5002 >/dev/null || exit 14
echo NET_TX_DONE=1
