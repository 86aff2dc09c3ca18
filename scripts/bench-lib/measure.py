#!/usr/bin/env python3
"""Measurement driver for scripts/bench.

  measure.py kvm     --out FILE --runs N --mem-runs M --kernel VMLINUX --initrd INITRD --ember EMBER
                     [--blkbench BLKBENCH --blk-runs B --blk-seq-mib S --blk-rand-secs R]
                     [--net-runs T --net-mib NM]
                     [--vsockperf VSOCKPERF --vsock-runs V --vsock-mib VM --vsock-pings P]
                     [--only GROUP,...]
  measure.py startup --out FILE --runs N --ember EMBER
  measure.py net     --stage STAGE.json --out FILE --net-runs T --net-mib NM --ember EMBER
                     (run by `kvm`: STAGE.json describes what it staged)

`kvm` needs a usable /dev/kvm (scripts/bench runs it inside scripts/nested-kvm). It stages Ember,
QEMU (each with the libraries `ldd` lists, QEMU also with the firmware it opens), the kernel and
the initrd on a tmpfs, then measures boot-to-init and VMM memory overhead, interleaving the VMMs.
With --blkbench (a static build of blkbench.c) it also stages a second initrd (the first plus
/bin/blkbench) and a BLK_DISK_MIB MiB data disk made by `blkbench fill`, and measures block I/O:
Ember with io_engine Async and Sync, and QEMU with aio=io_uring, on that same disk.
With --net-runs > 0 it stages a third initrd (the first plus /bin/netbench, netbench.sh) and runs
`measure.py net` in a child under `unshare --net`: a network namespace of its own, where every VMM
run gets a freshly made TAP (tap0, 172.16.0.1/24) and the guest 172.16.0.2. It measures TCP
throughput both ways and ping RTT from the namespace's side, Ember and QEMU (vhost=off) in turn.
With --vsockperf (a static build of vsock_perf.c) it stages a fourth initrd (the first plus
/bin/vsockperf) and measures virtio-vsock: Ember's device through its Unix socket with
Firecracker's `CONNECT <port>` scheme, QEMU's vhost-vsock-device through AF_VSOCK to CID 3.
The snap group (snapbench.py) measures snapshot create time and size (idle and with 128 MiB
dirtied), and restore to a responding guest against a cold boot: Ember's Full snapshot loaded
from a File, QEMU's migration stream saved with `migrate` and loaded with -incoming.
--only limits `kvm` to some of the figure groups boot, mem, blk, net, vsock, api, snap (default:
all).
`startup` measures Ember's process start to API socket accepting; it needs no KVM.
Each writes raw samples as JSON to FILE; report.py turns them into statistics.
"""
import argparse
import gzip
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import snapbench

BOOT_ARGS = ("console=ttyS0 quiet reboot=k panic=-1 pci=off i8042.noaux i8042.nomux "
             "i8042.nopnp i8042.dumbkbd -- ")
RUN_TIMEOUT_S = 60
KILL_WAIT_S = 20
SMAPS_TIMEOUT_S = 20
SETTLE_S = 3.0
# QEMU microvm with -kernel opens these from its data dir (checked with strace: pvh.bin for the
# PVH vmlinux, qboot.rom as microvm's default firmware).
QEMU_FIRMWARE = ["pvh.bin", "qboot.rom", "bios-microvm.bin"]
# Block figures: a raw data disk of BLK_DISK_MIB MiB, its first half read, its second half written.
BLK_DISK_MIB = 128
BLK_REGION_MIB = BLK_DISK_MIB // 2
BLK_QDS = (1, 8)
BLK_VARIANTS = ["ember_async", "ember_sync", "qemu"]
# QEMU microvm appends the virtio_mmio.device= arguments it generates (auto-kernel-cmdline) to the
# END of the command line, i.e. after "--", where Linux hands them to init instead of parsing them.
# So the block runs turn that off, plug the disk into transport 0 explicitly and describe it
# before "--" themselves: microvm's transports are 512 bytes apart from 0xfeb00000 and, without
# ACPI (no second IOAPIC), use GSIs from 5.
QEMU_BLK_MMIO_ARG = "virtio_mmio.device=512@0xfeb00000:5"
# Net figures: the guest (netbench.sh) and the host end of the TAP, in a namespace of their own.
NET_RUN_TIMEOUT_S = 150
NET_TAP = "tap0"
NET_HOST_IP, NET_GUEST_IP, NET_PREFIX = "172.16.0.1", "172.16.0.2", 24
NET_GUEST_MAC = "06:00:ac:10:00:02"
NET_RX_PORT, NET_TX_PORT = 5001, 5002   # the guest listens on RX_PORT, the host on TX_PORT
NET_PINGS, NET_PING_INTERVAL_S = 20, 0.2
NET_VARIANTS = ["ember", "qemu"]
# Vsock figures: the guest (vsock_perf.c) listens on VSOCK_PORT; both VMMs give it CID 3.
VSOCK_RUN_TIMEOUT_S = 150
VSOCK_CID, VSOCK_PORT = 3, 5201
GROUPS = ("boot", "mem", "blk", "net", "vsock", "api", "snap", "run")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Staging
# ---------------------------------------------------------------------------------------------
def ldd_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"=>\s*(/\S+)", line)
        if m:
            libs.append(m.group(1))
    return libs


def stage_binary(binary, root):
    """Copies binary to root/bin and its libraries to root/lib; returns (path, env)."""
    os.makedirs(f"{root}/bin", exist_ok=True)
    os.makedirs(f"{root}/lib", exist_ok=True)
    dst = f"{root}/bin/{os.path.basename(binary)}"
    shutil.copy2(binary, dst)
    for lib in ldd_libs(binary):
        shutil.copy2(lib, f"{root}/lib/{os.path.basename(lib)}")
    env = dict(os.environ, LD_LIBRARY_PATH=f"{root}/lib")
    return dst, env


def stage(args, base):
    log(f"staging binaries, kernel and initrd in {base}")
    t = time.monotonic()
    ember, ember_env = stage_binary(args.ember, f"{base}/ember")
    qemu_bin = shutil.which("qemu-system-x86_64")
    if not qemu_bin:
        raise SystemExit("qemu-system-x86_64 not found")
    qemu, qemu_env = stage_binary(qemu_bin, f"{base}/qemu")
    # QEMU also looks in <exe dir>/../share/qemu; -L points there explicitly.
    share = f"{base}/qemu/share/qemu"
    os.makedirs(share, exist_ok=True)
    for fw in QEMU_FIRMWARE:
        src = f"/usr/share/qemu/{fw}"
        if os.path.exists(src):
            shutil.copy(src, f"{share}/{fw}")  # follows symlinks into /usr/share/seabios etc.
    os.makedirs(f"{base}/guest", exist_ok=True)
    kernel = shutil.copy(args.kernel, f"{base}/guest/vmlinux")
    initrd = shutil.copy(args.initrd, f"{base}/guest/initrd.cpio.gz")
    st = {"ember": (ember, ember_env), "qemu": (qemu, qemu_env), "qemu_share": share,
          "kernel": kernel, "initrd": initrd, "base": base}
    if args.blkbench and "blk" in args.only:
        st.update(stage_block(args.blkbench, initrd, f"{base}/guest"))
    if args.net_runs > 0 and "net" in args.only:
        st.update(stage_net(initrd, f"{base}/guest"))
    if args.vsockperf and "vsock" in args.only:
        st["vsock_initrd"] = append_program(initrd, f"{base}/guest/initrd-vsock.cpio.gz",
                                            "vsockperf", args.vsockperf)
    if args.rootfs_img and "run" in args.only:
        st["rootfs_img"] = shutil.copy(args.rootfs_img, f"{base}/guest/rootfs.ext4")
    log(f"staged in {time.monotonic() - t:.1f} s")
    return st


def newc(name, mode, data, ino):
    """One entry of a newc cpio archive (the format the kernel's initramfs unpacker reads)."""
    name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name), 0)
    hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + name
    hdr += b"\0" * (-len(hdr) % 4)
    return hdr + data + b"\0" * (-len(data) % 4)


def append_program(initrd, out, name, path):
    """out: initrd plus a second gzip'ed cpio holding path as /bin/name (Linux unpacks
    concatenated archives in turn)."""
    with open(path, "rb") as f:
        prog = f.read()
    extra = newc(f"bin/{name}", 0o100755, prog, 1) + newc("TRAILER!!!", 0, b"", 0)
    with open(initrd, "rb") as src, open(out, "wb") as dst:
        dst.write(src.read())
        dst.write(gzip.compress(extra, compresslevel=1, mtime=0))
    return out


def stage_block(blkbench, initrd, guest):
    """initrd-blk.cpio.gz: the initrd plus /bin/blkbench; disk.img: the data disk, made by
    `blkbench fill`."""
    blk_initrd = append_program(initrd, f"{guest}/initrd-blk.cpio.gz", "blkbench", blkbench)
    disk = f"{guest}/disk.img"
    subprocess.run([blkbench, "fill", disk, str(BLK_DISK_MIB)], check=True)
    return {"blk_initrd": blk_initrd, "blk_disk": disk}


def stage_net(initrd, guest):
    """initrd-net.cpio.gz: the initrd plus netbench.sh as /bin/netbench."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netbench.sh")
    return {"net_initrd": append_program(initrd, f"{guest}/initrd-net.cpio.gz", "netbench",
                                         script)}


def vmm_argv(vmm, st, vcpus, mem_mib, cmd, tag, io_engine=None, tap=None, vsock_uds=None):
    """Command line for one run. With io_engine (Ember: "Async" or "Sync"; QEMU: "io_uring") the
    guest boots the block initrd and gets the data disk as /dev/vda. With tap (a TAP device's
    name) it boots the net initrd and gets one virtio-net device on that TAP as eth0. With
    vsock_uds it boots the vsock initrd and gets a virtio-vsock device with CID 3: Ember's on
    that Unix socket, QEMU's a vhost-vsock-device (the host reaches it through AF_VSOCK)."""
    initrd = (st["blk_initrd"] if io_engine else st["net_initrd"] if tap
              else st["vsock_initrd"] if vsock_uds else st["initrd"])
    boot_args = BOOT_ARGS + cmd
    if vmm == "ember":
        cfg = f"{st['base']}/ember-{tag}.json"
        conf = {"boot-source": {"kernel_image_path": st["kernel"],
                                "initrd_path": initrd, "boot_args": boot_args},
                "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib}}
        if io_engine:
            conf["drives"] = [{"drive_id": "data", "path_on_host": st["blk_disk"],
                               "is_root_device": False, "is_read_only": False,
                               "cache_type": "Writeback", "io_engine": io_engine}]
        if tap:
            conf["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": tap,
                                           "guest_mac": NET_GUEST_MAC}]
        if vsock_uds:
            conf["vsock"] = {"guest_cid": VSOCK_CID, "uds_path": vsock_uds}
        with open(cfg, "w") as f:
            json.dump(conf, f)
        exe, env = st["ember"]
        return [exe, "--no-api", "--boot-timer", "--level", "Info", "--config-file", cfg], env
    exe, env = st["qemu"]
    machine, dev = "microvm,acpi=off", []
    if io_engine or tap or vsock_uds:
        # One device, on transport 0, described before "--" (see QEMU_BLK_MMIO_ARG).
        machine += ",auto-kernel-cmdline=off"
        boot_args = BOOT_ARGS.replace(" -- ", f" {QEMU_BLK_MMIO_ARG} -- ") + cmd
    if io_engine:
        dev = ["-drive", f"id=d0,file={st['blk_disk']},format=raw,if=none,aio={io_engine},"
                         "cache=writeback",
               "-device", "virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0"]
    elif tap:
        # vhost=off: QEMU's virtio-net datapath stays in its own user-space process, like Ember's.
        dev = ["-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off",
               "-device", f"virtio-net-device,netdev=n0,mac={NET_GUEST_MAC},"
                          "bus=virtio-mmio-bus.0"]
    elif vsock_uds:
        # The kernel's vhost-vsock datapath (/dev/vhost-vsock), as a QEMU user would run it.
        dev = ["-device", f"vhost-vsock-device,guest-cid={VSOCK_CID},bus=virtio-mmio-bus.0"]
    return [exe, "-L", st["qemu_share"], "-M", machine, "-accel", "kvm", "-cpu", "host",
            "-m", str(mem_mib), "-smp", str(vcpus), "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", st["kernel"], "-initrd", initrd, "-append", boot_args] + dev, env


# ---------------------------------------------------------------------------------------------
# One VMM process, its console (stdout) and log (stderr) read line by line with timestamps.
# ---------------------------------------------------------------------------------------------
class VmmRun:
    MARKERS = ("EMBER_GUEST_INIT", "EMBER_EXIT_STATUS=")

    def __init__(self, argv, env, stdin=subprocess.DEVNULL, markers=()):
        self.markers = self.MARKERS + tuple(markers)
        self.events = {}
        self.values = {}      # BLK_*, NET_* and VSOCK_*=VALUE lines on the console
        self.value_t = {}     # when each of those first appeared (s since exec)
        self.log_notes = []   # the VMM's stderr lines that mention errors or warnings
        self.boot_timer_us = None
        self.exit_status = None
        self.tail = {"stdout": [], "stderr": []}
        self.eof = 0
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        for name in ("stdout", "stderr"):
            threading.Thread(target=self._reader, args=(name,), daemon=True).start()

    def _reader(self, name):
        pipe = getattr(self.proc, name)
        for raw in iter(pipe.readline, b""):
            now = time.monotonic()
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.cond:
                tail = self.tail[name]
                tail.append(line)
                del tail[:-20]
                if name == "stdout":
                    kv = re.search(r"\b((?:BLK|NET|VSOCK)_[A-Z0-9_]+)=(\S+)", line)
                    if kv and kv.group(1) not in self.values:
                        self.values[kv.group(1)] = kv.group(2)
                        self.value_t[kv.group(1)] = now - self.t0
                    for m in self.markers:
                        if m in line and m not in self.events:
                            self.events[m] = now - self.t0
                            if m == "EMBER_EXIT_STATUS=":
                                s = re.search(r"EMBER_EXIT_STATUS=(\d+)", line)
                                self.exit_status = int(s.group(1)) if s else None
                else:
                    if re.search(r"error|warn|fail", line, re.I) and len(self.log_notes) < 20:
                        self.log_notes.append(line)
                    m = re.search(r"Guest-boot-time\s*=\s*(\d+)\s*us", line)
                    if m and self.boot_timer_us is None:
                        self.boot_timer_us = int(m.group(1))
                self.cond.notify_all()
        with self.cond:
            self.eof += 1
            self.cond.notify_all()

    def _wait_for(self, table, key, deadline):
        """Waits until `key` is in `table` (or the VMM's output ends, or the monotonic deadline
        passes); returns its entry or None."""
        with self.cond:
            while key not in table and self.eof < 2:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return table.get(key)

    def wait_marker(self, marker, timeout):
        return self._wait_for(self.events, marker, self.t0 + timeout)

    def wait_value(self, key, deadline):
        """The value of a KEY=VALUE console line, once there (None at EOF or the deadline)."""
        return self._wait_for(self.values, key, deadline)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILLs the VMM; returns None, or a description if it is still there after 20 s."""
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=KILL_WAIT_S)
            return None
        except subprocess.TimeoutExpired:
            return f"VMM pid {self.proc.pid} still alive {KILL_WAIT_S} s after SIGKILL: " \
                   + proc_state(self.proc.pid)

    def failure(self, what):
        rc = self.proc.poll()
        return {"ok": False, "error": what, "rc": rc,
                "stdout_tail": self.tail["stdout"][-8:], "stderr_tail": self.tail["stderr"][-8:]}


def proc_state(pid):
    """State and kernel wait channel of every thread of pid, for failure records."""
    out = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task")):
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/comm") as f:
                    comm = f.read().strip()
                with open(f"{base}/wchan") as f:
                    wchan = f.read().strip()
                with open(f"{base}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                out.append(f"{tid}:{comm}:{state}:{wchan}")
            except OSError:
                pass
    except OSError as e:
        return f"unreadable ({e})"
    return " ".join(out)


def with_timeout(fn, timeout):
    """Runs fn in a daemon thread; returns (result, None) or (None, error text)."""
    box = {}

    def run():
        try:
            box["r"] = fn()
        except Exception as e:  # noqa: BLE001 - reported as a failed sample
            box["e"] = repr(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        return None, f"timed out after {timeout} s"
    return box.get("r"), box.get("e")


def guarded(r, measure):
    try:
        return measure()
    except Exception as e:  # noqa: BLE001 - reported as a failed sample
        return r.failure(f"measurement error: {e!r}")


def finish(r, sample):
    """Kills the run's VMM; a VMM that survives SIGKILL turns the sample into a failure."""
    stuck = r.kill()
    if stuck:
        log(stuck)
        if sample.get("ok"):
            sample = dict(sample, ok=False, error=stuck, measured_value=sample.get("value"))
            sample.pop("value", None)
        else:
            sample["kill_error"] = stuck
    return sample


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
def boot_once(vmm, st):
    """Exec to EMBER_GUEST_INIT on the console; 1 vCPU, 256 MiB, guest runs `true`."""
    argv, env = vmm_argv(vmm, st, 1, 256, "true", "boot")
    r = VmmRun(argv, env)
    return finish(r, guarded(r, lambda: boot_measure(vmm, r)))


def boot_measure(vmm, r):
    t_init = r.wait_marker("EMBER_GUEST_INIT", RUN_TIMEOUT_S)
    if t_init is None:
        return r.failure("no EMBER_GUEST_INIT within timeout or VMM exited")
    t_exit = r.wait_marker("EMBER_EXIT_STATUS=", RUN_TIMEOUT_S)
    sample = {"ok": True, "value": t_init * 1000.0, "guest_exit_status": r.exit_status,
              "exit_status_ms": None if t_exit is None else t_exit * 1000.0}
    if vmm == "ember":
        # Ember must exit by itself when the guest reboots (reboot=k).
        rc = r.wait_exit(10)
        sample["vmm_rc"] = rc
        if rc is None:
            sample["note"] = "Ember did not exit within 10 s of the guest's reboot"
        sample["boot_timer_us"] = r.boot_timer_us
    return sample


def run_once(vmm, st):
    """`ember run -- true` against QEMU microvm booting the same kernel and ext4 image (its /init
    runs `true`): 1 vCPU, 256 MiB. Ember: exec to its exit with the command's status 0 (its write
    layer, boot, agent, vsock, teardown included). QEMU: exec to EMBER_EXIT_STATUS=0 on its
    console (its image opened with snapshot=on, so it is not written either); then killed."""
    if vmm == "ember":
        exe, env = st["ember"]
        argv = [exe, "run", "--cpus", "1", "--mem", "256", "--kernel", st["kernel"],
                "--rootfs", st["rootfs_img"], "--", "true"]
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": "ember run did not end within timeout"}
        ms = (time.monotonic() - t0) * 1000.0
        if p.returncode != 0:
            return {"ok": False, "error": f"ember run exited {p.returncode}: "
                                          f"{p.stderr.decode(errors='replace')[-300:]}"}
        return {"ok": True, "value": ms}
    exe, env = st["qemu"]
    append = ("console=ttyS0 quiet reboot=k panic=-1 pci=off i8042.noaux i8042.nomux "
              f"i8042.nopnp i8042.dumbkbd {QEMU_BLK_MMIO_ARG} root=/dev/vda rw init=/init -- true")
    argv = [exe, "-L", st["qemu_share"], "-M", "microvm,acpi=off,auto-kernel-cmdline=off",
            "-accel", "kvm", "-cpu", "host", "-m", "256", "-smp", "1", "-nographic",
            "-no-reboot", "-nic", "none", "-kernel", st["kernel"], "-append", append,
            "-drive", f"id=d0,file={st['rootfs_img']},format=raw,if=none,snapshot=on",
            "-device", "virtio-blk-device,drive=d0,bus=virtio-mmio-bus.0"]
    r = VmmRun(argv, env)

    def measure():
        t = r.wait_marker("EMBER_EXIT_STATUS=", RUN_TIMEOUT_S)
        if t is None:
            return r.failure("no EMBER_EXIT_STATUS within timeout or QEMU exited")
        if r.exit_status != 0:
            return r.failure(f"guest command status {r.exit_status}")
        return {"ok": True, "value": t * 1000.0}
    return finish(r, guarded(r, measure))


def run_warm(runs, st, base):
    """`ember run --warm -- true`: one untimed run makes the cached snapshot (EMBER_CACHE on the
    tmpfs), then `runs` timed runs restore it; exec to exit with status 0."""
    exe, env = st["ember"]
    env = dict(env, EMBER_CACHE=f"{base}/run-cache")
    argv = [exe, "run", "--warm", "--cpus", "1", "--mem", "256", "--kernel", st["kernel"],
            "--rootfs", st["rootfs_img"], "--", "true"]
    out = []
    for i in range(runs + 1):
        t0 = time.monotonic()
        try:
            p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=RUN_TIMEOUT_S)
            rc, err = p.returncode, p.stderr.decode(errors="replace")[-300:]
        except subprocess.TimeoutExpired:
            rc, err = None, "timeout"
        ms = (time.monotonic() - t0) * 1000.0
        label = "priming" if i == 0 else f"run {i}/{runs}"
        log(f"`run --warm -- true` ms {label}: {ms:.1f}" if rc == 0 else f"{label}: FAILED {rc} {err}")
        if i > 0:
            out.append({"ok": True, "value": ms, "run": i - 1} if rc == 0
                       else {"ok": False, "run": i - 1, "error": f"exit {rc}: {err}"})
    return {"ember": out}


def parse_smaps(pid):
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split(None, 5)
                cur = {"name": parts[5].strip() if len(parts) > 5 else "", "size_kb": 0,
                       "rss_kb": 0}
                maps.append(cur)
            elif cur is not None and line.startswith("Size:"):
                cur["size_kb"] = int(line.split()[1])
            elif cur is not None and line.startswith("Rss:"):
                cur["rss_kb"] = int(line.split()[1])
    return maps


def memory_once(vmm, st, vcpus, mem_mib):
    """Rss of every mapping but guest RAM, guest idle (`sleep 30`), 3 s after guest init."""
    argv, env = vmm_argv(vmm, st, vcpus, mem_mib, "sleep 30", f"mem{vcpus}")
    r = VmmRun(argv, env)
    return finish(r, guarded(r, lambda: memory_measure(r, mem_mib)))


def memory_measure(r, mem_mib):
    if r.wait_marker("EMBER_GUEST_INIT", RUN_TIMEOUT_S) is None:
        return r.failure("no EMBER_GUEST_INIT within timeout or VMM exited")
    time.sleep(SETTLE_S)
    if r.proc.poll() is not None:
        return r.failure("VMM exited while the guest should be idle")
    maps, err = with_timeout(lambda: parse_smaps(r.proc.pid), SMAPS_TIMEOUT_S)
    if err:
        return r.failure(f"reading /proc/{r.proc.pid}/smaps: {err}; "
                         + proc_state(r.proc.pid))
    anon = [m for m in maps if m["name"] == "" or m["name"].startswith("[anon")]
    ram = [m for m in anon if m["size_kb"] >= mem_mib * 1024]
    if not ram:
        return r.failure(f"no anonymous mapping of >= {mem_mib} MiB in smaps")
    guest = max(ram, key=lambda m: m["size_kb"])
    total = sum(m["rss_kb"] for m in maps)
    return {"ok": True, "value": (total - guest["rss_kb"]) / 1024.0,
            "total_rss_mib": total / 1024.0, "guest_ram_rss_mib": guest["rss_kb"] / 1024.0,
            "guest_ram_mapping_mib": guest["size_kb"] / 1024.0, "mappings": len(maps)}


BLK_KEYS = {"BLK_SEQREAD_MIBPS": "seqread_mibps", "BLK_SEQWRITE_MIBPS": "seqwrite_mibps"}
BLK_KEYS.update({f"BLK_RANDREAD_QD{qd}_IOPS": f"randread_qd{qd}_iops" for qd in BLK_QDS})


def blk_once(variant, st, seq_mib, rand_secs):
    """One boot of the block initrd running `blkbench run /dev/vda`; 1 vCPU, 256 MiB."""
    vmm, engine = {"ember_async": ("ember", "Async"), "ember_sync": ("ember", "Sync"),
                   "qemu": ("qemu", "io_uring")}[variant]
    cmd = (f"blkbench run /dev/vda --region-mib {BLK_REGION_MIB} --seq-mib {seq_mib} "
           f"--bs-kib 1024 --rand-secs {rand_secs}" + "".join(f" --qd {q}" for q in BLK_QDS))
    argv, env = vmm_argv(vmm, st, 1, 256, cmd, f"blk-{variant}", engine)
    r = VmmRun(argv, env)
    sample = finish(r, guarded(r, lambda: blk_measure(vmm, r)))
    if r.log_notes:
        sample["vmm_log_notes"] = r.log_notes
    return sample


def blk_measure(vmm, r):
    if r.wait_marker("EMBER_EXIT_STATUS=", RUN_TIMEOUT_S) is None:
        return r.failure("no EMBER_EXIT_STATUS within timeout or VMM exited")
    with r.cond:
        raw = dict(r.values)
    sample = {"guest_exit_status": r.exit_status, "guest": raw}
    if vmm == "ember":
        sample["vmm_rc"] = r.wait_exit(10)
    problems = []
    if r.exit_status != 0:
        problems.append(f"guest exit status {r.exit_status}")
    if "BLK_FAIL" in raw:
        problems.append(f"blkbench: {raw['BLK_FAIL']}")
    if raw.get("BLK_ERRORS") != "0":
        problems.append(f"BLK_ERRORS={raw.get('BLK_ERRORS')} (blocks read with the wrong tag)")
    values = {}
    for key, name in BLK_KEYS.items():
        try:
            values[name] = float(raw[key])
        except (KeyError, ValueError):
            problems.append(f"no {key}")
    if problems:
        return dict(r.failure("; ".join(problems)), **sample)
    with r.cond:
        tail = r.tail["stderr"][-5:]
    return dict(sample, ok=True, values=values, stderr_tail=tail)


def ip_cmd(*argv):
    """Runs `ip ARGV...`; raises RuntimeError with ip's own message if it fails."""
    p = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)}: {p.stderr.strip() or p.returncode}")


def tap_remove():
    subprocess.run(["ip", "link", "del", NET_TAP], capture_output=True, timeout=20)


def tap_fresh():
    """A fresh TAP for one VMM run (a VMM refuses a TAP another process still holds): deletes
    the previous run's, if any, and makes tap0 anew with the host's address, up."""
    tap_remove()
    ip_cmd("tuntap", "add", "dev", NET_TAP, "mode", "tap")
    ip_cmd("addr", "add", f"{NET_HOST_IP}/{NET_PREFIX}", "dev", NET_TAP)
    ip_cmd("link", "set", NET_TAP, "up")


CURRENT_RUN = []  # the net child's running VmmRun, for its SIGTERM handler


def net_once(vmm, st, mib):
    """One boot of the net initrd running `netbench MIB` with eth0 on a fresh TAP; 1 vCPU,
    256 MiB. The host end: ping, then MIB MiB host -> guest, then MIB MiB guest -> host."""
    listener = None
    try:
        tap_fresh()
        # The guest connects to this as soon as it has received the host's data: listen first.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((NET_HOST_IP, NET_TX_PORT))
        listener.listen(1)
        argv, env = vmm_argv(vmm, st, 1, 256, f"netbench {mib}", f"net-{vmm}", tap=NET_TAP)
        r = VmmRun(argv, env)
    except Exception as e:  # noqa: BLE001 - reported as a failed sample
        if listener:
            listener.close()
        tap_remove()
        return {"ok": False, "error": f"set-up: {e!r}"}
    CURRENT_RUN[:] = [r]
    try:
        sample = finish(r, guarded(r, lambda: net_measure(vmm, r, listener, mib)))
    finally:
        CURRENT_RUN[:] = []
        listener.close()
        tap_remove()
    if r.log_notes:
        sample["vmm_log_notes"] = r.log_notes
    return sample


def ping_rtt(deadline):
    """RTT host -> guest over the TAP with the host's busybox ping: one untimed ping (ARP), then
    NET_PINGS at NET_PING_INTERVAL_S. Returns (stats dict, None) or (partial stats, error)."""
    left = deadline - time.monotonic()
    subprocess.run(["busybox", "ping", "-c", "1", "-W", "5", NET_GUEST_IP],
                   capture_output=True, timeout=max(1.0, min(10.0, left)))
    left = deadline - time.monotonic()
    budget = NET_PINGS * NET_PING_INTERVAL_S + 10
    p = subprocess.run(["busybox", "ping", "-c", str(NET_PINGS), "-i", str(NET_PING_INTERVAL_S),
                        "-W", "5", NET_GUEST_IP],
                       capture_output=True, text=True, timeout=max(1.0, min(budget, left)))
    rtts = [float(m) for m in re.findall(r"time=([0-9.]+) ms", p.stdout)]
    info = {"sent": NET_PINGS, "replies": len(rtts), "rtts_ms": rtts}
    if not rtts:
        return info, f"ping: no reply (rc {p.returncode}: {p.stdout.strip()[-200:]} " \
                     f"{p.stderr.strip()[-200:]})"
    info.update(median_ms=statistics.median(rtts), min_ms=min(rtts), max_ms=max(rtts),
                avg_ms=sum(rtts) / len(rtts))
    return info, None


def bounded(op, deadline, alive):
    """Retries a socket operation (on a socket with a short timeout) until it completes; raises
    TimeoutError past the deadline, or RuntimeError as soon as the VMM is gone, so a guest that
    died does not hold the run until its deadline."""
    while True:
        try:
            return op()
        except socket.timeout:
            if time.monotonic() > deadline:
                raise TimeoutError("timed out") from None
            if not alive():
                raise RuntimeError("the VMM exited") from None


def send_mib(s, mib, deadline, alive):
    """Sends `mib` MiB of zeros on s (a socket with a short timeout), bounded as bounded() is."""
    chunk = memoryview(bytes(1 << 20))
    for _ in range(mib):
        off = 0
        while off < len(chunk):
            off += bounded(lambda: s.send(chunk[off:]), deadline, alive)


def host_to_guest(mib, deadline, alive):
    """Connects to the guest's nc (retrying until it listens), sends MIB MiB, half-closes and
    waits for the guest's FIN, which its nc sends on exit once it has read everything. MiB/s
    from the established connection to that FIN."""
    while True:
        try:
            s = socket.create_connection((NET_GUEST_IP, NET_RX_PORT), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline or not alive():
                raise
            time.sleep(0.2)
    with s:
        s.settimeout(1.0)
        t = time.monotonic()
        send_mib(s, mib, deadline, alive)
        s.shutdown(socket.SHUT_WR)
        while bounded(lambda: s.recv(65536), deadline, alive):
            pass
        return mib / (time.monotonic() - t)


def guest_to_host(listener, mib, deadline, alive):
    """Accepts the guest's connection and reads until its FIN; MiB/s from accept() to the FIN."""
    listener.settimeout(1.0)
    c, _ = bounded(listener.accept, deadline, alive)
    with c:
        c.settimeout(1.0)
        t = time.monotonic()
        n = 0
        while True:
            b = bounded(lambda: c.recv(1 << 20), deadline, alive)
            if not b:
                break
            n += len(b)
        dt = time.monotonic() - t
    if n != mib << 20:
        raise RuntimeError(f"received {n} bytes, expected {mib << 20}")
    return mib / dt


def net_measure(vmm, r, listener, mib):
    deadline = r.t0 + NET_RUN_TIMEOUT_S
    if r.wait_value("NET_READY", deadline) is None:
        return r.failure("no NET_READY from the guest within timeout or VMM exited")
    sample = {"ready_ms": r.value_t["NET_READY"] * 1000.0}
    values, problems = {}, []
    try:
        info, err = ping_rtt(deadline)
        sample["ping"] = info
        if err:
            problems.append(err)
        else:
            values["rtt_ms"] = info["median_ms"]
    except Exception as e:  # noqa: BLE001 - reported in the failed sample
        problems.append(f"ping: {e!r}")

    def alive():
        return r.proc.poll() is None
    # The guest's program goes on in order, so a failed transfer ends the measurements.
    steps = (("host_to_guest_mibps", lambda: host_to_guest(mib, deadline, alive)),
             ("guest_to_host_mibps", lambda: guest_to_host(listener, mib, deadline, alive)),
             ("guest_to_host_pipe_mibps", lambda: guest_to_host(listener, mib, deadline, alive)))
    for name, fn in steps:
        try:
            values[name] = fn()
        except Exception as e:  # noqa: BLE001 - reported in the failed sample
            problems.append(f"{name.rsplit('_', 1)[0]}: {e!r}")
            break
    # After a failed transfer the guest is stuck in nc: do not wait out the deadline for it.
    stuck = len(values) < len(steps) + ("rtt_ms" in values)
    return conclude(vmm, r, sample, values, problems, stuck, NET_RUN_TIMEOUT_S)


def conclude(vmm, r, sample, values, problems, stuck, exit_wait_s, fail_key=None):
    """The end of a run whose guest program exits by itself: its exit status (waited for at most
    exit_wait_s, or 1 s when `stuck`: a guest that cannot finish), its console values, a
    fail_key line it printed, and Ember's own exit. Figures measured before a failure still
    count: report.py takes each value it finds in a failed sample."""
    if r.wait_marker("EMBER_EXIT_STATUS=", 1 if stuck else exit_wait_s) is None:
        problems.append("no EMBER_EXIT_STATUS within timeout or VMM exited")
    elif r.exit_status != 0:
        problems.append(f"guest exit status {r.exit_status}")
    sample["guest_exit_status"] = r.exit_status
    with r.cond:
        sample["guest"] = dict(r.values)
    if fail_key and fail_key in sample["guest"]:
        problems.append(f"guest: {sample['guest'][fail_key]}")
    if vmm == "ember":
        sample["vmm_rc"] = r.wait_exit(1 if stuck else 10)
    if problems:
        return dict(r.failure("; ".join(problems)), values=values, **sample)
    with r.cond:
        tail = r.tail["stderr"][-5:]
    return dict(sample, ok=True, values=values, stderr_tail=tail)


def pair_interleaved(label, runs, once, save_fn):
    """Rounds of one `once(vmm, i)` run per VMM (Ember and QEMU), alternating which one goes
    first; each sample gets its run number and wall time, and save_fn sees the samples so far."""
    samples = {v: [] for v in ("ember", "qemu")}
    for i in range(runs):
        for vmm in ("ember", "qemu") if i % 2 == 0 else ("qemu", "ember"):
            t = time.monotonic()
            s = once(vmm, i)
            s["run"], s["wall_s"] = i, round(time.monotonic() - t, 1)
            samples[vmm].append(s)
            shown = ", ".join(f"{n} {v:.2f}" for n, v in s.get("values", {}).items())
            if not s["ok"]:
                shown += f" FAILED ({s['error']})"
            log(f"{label} run {i + 1}/{runs} {vmm} ({s['wall_s']} s): {shown}")
            for note in s.get("vmm_log_notes", []):
                log(f"  {vmm} log: {note}")
            save_fn(samples)
    return samples


def net_interleaved(args, st, save_fn):
    """Net runs: each round runs Ember and QEMU once, alternating which one goes first."""
    return pair_interleaved("net", args.net_runs, lambda vmm, i: net_once(vmm, st, args.net_mib),
                            save_fn)


def net_params(args):
    return {"mib": args.net_mib, "pings": NET_PINGS, "ping_interval_s": NET_PING_INTERVAL_S,
            "vcpus": 1, "mem_mib": 256, "tap": NET_TAP, "host_ip": NET_HOST_IP,
            "guest_ip": NET_GUEST_IP}


def cmd_net(args):
    """The net runs, in a network namespace of their own (re-exec'ed under `unshare --net`
    unless the caller did that already)."""
    if os.environ.get("EMBER_BENCH_NETNS") != "1":
        os.execvpe("unshare", ["unshare", "--net", sys.executable, os.path.abspath(__file__)]
                   + sys.argv[1:], dict(os.environ, EMBER_BENCH_NETNS="1"))

    def on_term(signum, frame):
        for r in CURRENT_RUN:
            try:
                os.killpg(r.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        tap_remove()
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    with open(args.stage) as f:
        st = json.load(f)
    ip_cmd("link", "set", "lo", "up")
    params = net_params(args)
    net_interleaved(args, st, lambda samples: save({"net": samples, "net_params": params},
                                                   args.out))


def run_net_child(args, st, base):
    """Runs `measure.py net` under `unshare --net`, bounded; returns its samples. Runs it never
    got to (child killed or crashed) become failed samples."""
    stage_file, out = f"{base}/stage.json", f"{base}/net.json"
    with open(stage_file, "w") as f:
        json.dump(st, f)
    argv = ["unshare", "--net", sys.executable, os.path.abspath(__file__), "net",
            "--stage", stage_file, "--out", out, "--net-runs", str(args.net_runs),
            "--net-mib", str(args.net_mib), "--ember", args.ember]
    limit = args.net_runs * len(NET_VARIANTS) * (NET_RUN_TIMEOUT_S + KILL_WAIT_S + 15) + 60
    log(f"net: {args.net_runs} runs per VMM of {args.net_mib} MiB each way, in a network "
        f"namespace of their own (at most {limit} s)")
    proc = subprocess.Popen(argv, env=dict(os.environ, EMBER_BENCH_NETNS="1"),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.terminate()  # its handler kills the running VMM and removes the TAP
        try:
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        rc = f"killed after {limit} s"
    samples = {v: [] for v in NET_VARIANTS}
    try:
        with open(out) as f:
            samples = json.load(f)["net"]
    except (OSError, ValueError, KeyError):
        pass
    for vmm in NET_VARIANTS:
        done = {s.get("run") for s in samples.setdefault(vmm, [])}
        for i in range(args.net_runs):
            if i not in done:
                samples[vmm].append({"ok": False, "run": i,
                                     "error": f"net child ended (exit {rc}) before this run"})
    if rc != 0:
        log(f"net: the child run failed (exit {rc})")
    return samples


def vsock_connect(vmm, uds, deadline, alive):
    """A stream to the guest's VSOCK_PORT. Ember: connect to its Unix socket and send
    `CONNECT <port>\\n`; the stream is up once Ember answers `OK <host_port>\\n` (Firecracker's
    docs/vsock.md). QEMU: AF_VSOCK straight to CID 3 through the kernel's vhost-vsock."""
    if vmm == "qemu":
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        # One connect() with the whole budget: a timed-out connect cannot simply be retried.
        s.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            s.connect((VSOCK_CID, VSOCK_PORT))
        except BaseException:
            s.close()
            raise
        s.settimeout(1.0)
        return s
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        bounded(lambda: s.connect(uds), deadline, alive)
        s.sendall(f"CONNECT {VSOCK_PORT}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = bounded(lambda: s.recv(1), deadline, alive)
            if not b:
                raise RuntimeError(f"Ember closed the stream after {line!r} (no OK line)")
            line += b
        if not line.startswith(b"OK "):
            raise RuntimeError(f"Ember answered {line!r} to CONNECT")
    except BaseException:
        s.close()
        raise
    return s


def recv_exact(s, n, deadline, alive):
    got = 0
    while got < n:
        b = bounded(lambda: s.recv(min(1 << 20, n - got)), deadline, alive)
        if not b:
            raise RuntimeError(f"stream closed after {got} of {n} bytes")
        got += len(b)
    return got


def vsock_request(vmm, uds, op, mib, deadline, alive):
    s = vsock_connect(vmm, uds, deadline, alive)
    s.sendall(op + (struct.pack("<I", mib) if mib is not None else b""))
    return s


def vsock_measure(vmm, r, uds, mib, pings):
    """After VSOCK_READY: one untimed ping, `pings` timed ones (connect + 1-byte round trip on a
    new stream each), MIB MiB host -> guest, MIB MiB guest -> host, then the quit request."""
    deadline = r.t0 + VSOCK_RUN_TIMEOUT_S
    if r.wait_value("VSOCK_READY", deadline) is None:
        return r.failure("no VSOCK_READY from the guest within timeout or VMM exited")
    sample = {"ready_ms": r.value_t["VSOCK_READY"] * 1000.0}
    values, problems = {}, []

    def alive():
        return r.proc.poll() is None

    def ping():
        t = time.monotonic()
        with vsock_request(vmm, uds, b"p", None, deadline, alive) as s:
            if bounded(lambda: s.recv(1), deadline, alive) != b"p":
                raise RuntimeError("no ping answer")
            return (time.monotonic() - t) * 1000.0

    def connect_ms():
        ping()
        rtts = [ping() for _ in range(pings)]
        sample["connect_rtts_ms"] = rtts
        return statistics.median(rtts)

    def host_to_guest():
        with vsock_request(vmm, uds, b"s", mib, deadline, alive) as s:
            t = time.monotonic()
            send_mib(s, mib, deadline, alive)
            if bounded(lambda: s.recv(1), deadline, alive) != b"k":
                raise RuntimeError("the guest did not acknowledge the data")
            return mib / (time.monotonic() - t)

    def guest_to_host():
        with vsock_request(vmm, uds, b"o", mib, deadline, alive) as s:
            t = time.monotonic()
            recv_exact(s, mib << 20, deadline, alive)
            return mib / (time.monotonic() - t)

    # The guest serves one request at a time: a failed step ends the measurements.
    for name, fn in (("connect_ms", connect_ms), ("host_to_guest_mibps", host_to_guest),
                     ("guest_to_host_mibps", guest_to_host)):
        try:
            values[name] = fn()
        except Exception as e:  # noqa: BLE001 - reported in the failed sample
            problems.append(f"{name}: {e!r}")
            break
    if not problems:
        try:
            with vsock_request(vmm, uds, b"q", None, deadline, alive) as s:
                bounded(lambda: s.recv(1), deadline, alive)
        except Exception as e:  # noqa: BLE001 - reported in the failed sample
            problems.append(f"quit: {e!r}")
    return conclude(vmm, r, sample, values, problems, bool(problems), 30, "VSOCK_FAIL")


def vsock_once(vmm, st, mib, pings, i):
    """One boot of the vsock initrd running `vsockperf PORT`; 1 vCPU, 256 MiB."""
    uds = f"{st['base']}/vsock-{vmm}-{i}.sock"
    argv, env = vmm_argv(vmm, st, 1, 256, f"vsockperf {VSOCK_PORT}", f"vsock-{vmm}",
                         vsock_uds=uds)
    r = VmmRun(argv, env)
    try:
        sample = finish(r, guarded(r, lambda: vsock_measure(vmm, r, uds, mib, pings)))
    finally:
        if os.path.exists(uds):
            os.unlink(uds)
    if r.log_notes:
        sample["vmm_log_notes"] = r.log_notes
    return sample


def vsock_interleaved(args, st, save_fn):
    """Vsock runs: each round runs Ember and QEMU once, alternating which one goes first."""
    return pair_interleaved(
        "vsock", args.vsock_runs,
        lambda vmm, i: vsock_once(vmm, st, args.vsock_mib, args.vsock_pings, i), save_fn)


def first_response(s, t0):
    """Sends GET / on the connected socket; ms from t0 to the status line, None if none came."""
    s.settimeout(RUN_TIMEOUT_S)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return None
            buf += chunk
        return (time.monotonic() - t0) * 1000.0 if buf.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def startup_once(ember, env, sockdir, i):
    """Exec of `ember --api-sock` to the first successful connect() on the socket."""
    path = f"{sockdir}/ember-{os.getpid()}-{i}.sock"
    t0 = time.monotonic()
    proc = subprocess.Popen([ember, "--api-sock", path], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                t = time.monotonic() - t0
                first = first_response(s, t0)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            finally:
                s.close()
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").splitlines()[-8:]
                return {"ok": False, "error": "ember exited before the socket accepted",
                        "rc": proc.returncode, "stderr_tail": err}
            if time.monotonic() - t0 > RUN_TIMEOUT_S:
                return {"ok": False, "error": "socket not accepting within timeout"}
            time.sleep(0.0002)
        proc.terminate()
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        sample = {"ok": True, "value": t * 1000.0, "first_get_response_ms": first,
                  "sigterm_rc": rc}
        if rc is None:
            sample["note"] = "Ember did not exit within 10 s of SIGTERM"
        return sample
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log(f"ember pid {proc.pid} still alive after SIGKILL: {proc_state(proc.pid)}")
        proc.stderr.close()
        if os.path.exists(path):
            os.unlink(path)


def environment():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"kernel": platform.release(), "cpu_model": cpu, "nproc": os.cpu_count(),
            "in_l1": os.environ.get("EMBER_IN_L1") == "1"}


def version(argv, env=None):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=30).stdout
        return out.splitlines()[0].strip() if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def interleaved(runs, order, fn, label):
    samples = {v: [] for v in order}
    for i in range(runs):
        seq = order if i % 2 == 0 else list(reversed(order))  # alternate who goes first
        for vmm in seq:
            s = fn(vmm)
            s["run"] = i
            samples[vmm].append(s)
            shown = f"{s['value']:.1f}" if s["ok"] else f"FAILED ({s['error']})"
            log(f"{label} run {i + 1}/{runs} {vmm}: {shown}")
    return samples


def blk_interleaved(args, st):
    """Block runs: each round runs every variant once, rotating which one goes first."""
    samples = {v: [] for v in BLK_VARIANTS}
    for i in range(args.blk_runs):
        k = i % len(BLK_VARIANTS)
        for variant in BLK_VARIANTS[k:] + BLK_VARIANTS[:k]:
            t = time.monotonic()
            s = blk_once(variant, st, args.blk_seq_mib, args.blk_rand_secs)
            s["run"], s["wall_s"] = i, round(time.monotonic() - t, 1)
            samples[variant].append(s)
            if s["ok"]:
                shown = ", ".join(f"{n} {v:.0f}" for n, v in s["values"].items())
            else:
                shown = f"FAILED ({s['error']})"
            log(f"block I/O run {i + 1}/{args.blk_runs} {variant} ({s['wall_s']} s): {shown}")
            for note in s.get("vmm_log_notes", []):
                log(f"  {variant} log: {note}")
    return samples


def cmd_kvm(args):
    base = tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp")
    st = stage(args, base)
    res = {"environment": environment()}
    res["environment"]["qemu_version"] = version([st["qemu"][0], "--version"], st["qemu"][1])
    res["environment"]["ember_version"] = version([st["ember"][0], "--version"], st["ember"][1])
    res["only"] = sorted(args.only)
    order = ["ember", "qemu"]
    save(res, args.out)  # after every figure, so a lost L1 still leaves the figures so far
    if "boot" in args.only:
        res["boot_to_init"] = interleaved(args.runs, order, lambda v: boot_once(v, st),
                                          "boot-to-init ms")
        save(res, args.out)
    for vcpus, mem in ((1, 256), (2, 1024)) if "mem" in args.only else ():
        res[f"mem_{vcpus}_{mem}"] = interleaved(
            args.mem_runs, order, lambda v, c=vcpus, m=mem: memory_once(v, st, c, m),
            f"memory overhead MiB ({vcpus} vCPU, {mem} MiB)")
        save(res, args.out)
    if "rootfs_img" in st:
        res["run_true"] = interleaved(args.runs, order, lambda v: run_once(v, st),
                                      "`run -- true` ms")
        save(res, args.out)
        res["run_warm"] = run_warm(args.runs, st, base)
        save(res, args.out)
    if "blk_initrd" in st:
        res["blk"] = blk_interleaved(args, st)
        res["blk_params"] = {"disk_mib": BLK_DISK_MIB, "region_mib": BLK_REGION_MIB,
                             "seq_mib": args.blk_seq_mib, "bs_kib": 1024,
                             "rand_secs": args.blk_rand_secs, "qds": list(BLK_QDS),
                             "vcpus": 1, "mem_mib": 256}
        save(res, args.out)
    if "net_initrd" in st:
        res["net"] = run_net_child(args, st, base)
        res["net_params"] = net_params(args)
        save(res, args.out)
    if "vsock_initrd" in st:
        params = {"mib": args.vsock_mib, "pings": args.vsock_pings, "vcpus": 1, "mem_mib": 256,
                  "cid": VSOCK_CID, "port": VSOCK_PORT}

        def save_vsock(samples):
            res["vsock"], res["vsock_params"] = samples, params
            save(res, args.out)
        vsock_interleaved(args, st, save_vsock)
    if "snap" in args.only:
        def save_snap(samples):
            res["snap"] = samples
            res["snap_params"] = {"vcpus": 1, "mem_mib": 256, "dirty_mib": snapbench.DIRTY_MIB,
                                  "ping_interval_ms": snapbench.PING_INTERVAL_S * 1000}
            save(res, args.out)
        snapbench.run(sys.modules[__name__], args, st, base, save_snap)
    if "api" in args.only:
        ember, env = st["ember"]
        res["api_startup"] = {"ember": [dict(startup_once(ember, env, base, i), run=i)
                                        for i in range(args.runs)]}
        log("api-startup ms (L1): " + ", ".join(
            f"{s['value']:.1f}" if s["ok"] else "FAILED" for s in res["api_startup"]["ember"]))
        save(res, args.out)
    shutil.rmtree(base, ignore_errors=True)


def save(res, path):
    with open(path + ".part", "w") as f:
        json.dump(res, f, indent=1)
    os.replace(path + ".part", path)


def cmd_startup(args):
    sockdir = tempfile.mkdtemp(prefix="ember-bench-", dir="/tmp")
    try:
        samples = [dict(startup_once(args.ember, dict(os.environ), sockdir, i), run=i)
                   for i in range(args.runs)]
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)
    log("api-startup ms (host): " + ", ".join(
        f"{s['value']:.1f}" if s["ok"] else "FAILED" for s in samples))
    with open(args.out, "w") as f:
        json.dump({"environment": environment(), "api_startup": {"ember": samples}}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["kvm", "startup", "net"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--mem-runs", type=int, default=3)
    ap.add_argument("--kernel")
    ap.add_argument("--initrd")
    ap.add_argument("--rootfs-img", help="run: the ext4 root image both VMMs boot")
    ap.add_argument("--ember", required=True)
    ap.add_argument("--blkbench")
    ap.add_argument("--blk-runs", type=int, default=3)
    ap.add_argument("--blk-seq-mib", type=int, default=BLK_REGION_MIB)
    ap.add_argument("--blk-rand-secs", type=int, default=3)
    ap.add_argument("--net-runs", type=int, default=0)
    ap.add_argument("--net-mib", type=int, default=64)
    ap.add_argument("--vsockperf")
    ap.add_argument("--vsock-runs", type=int, default=3)
    ap.add_argument("--vsock-mib", type=int, default=64)
    ap.add_argument("--vsock-pings", type=int, default=20)
    ap.add_argument("--only", default=",".join(GROUPS),
                    help="comma-separated figure groups for kvm: " + ",".join(GROUPS))
    ap.add_argument("--stage", help="net: the staging description written by kvm")
    args = ap.parse_args()
    args.only = set(filter(None, args.only.split(",")))
    if not args.only or not args.only <= set(GROUPS):
        ap.error(f"--only takes a comma-separated subset of {','.join(GROUPS)}")
    if args.mode == "kvm":
        if not (args.kernel and args.initrd):
            ap.error("kvm needs --kernel and --initrd")
        cmd_kvm(args)
    elif args.mode == "net":
        if not args.stage:
            ap.error("net needs --stage")
        cmd_net(args)
    else:
        cmd_startup(args)


if __name__ == "__main__":
    main()
