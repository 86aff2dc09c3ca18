#!/usr/bin/env python3
"""Turns measure.py's raw samples into DIR/results.json, DIR/results.md and DIR/ratios.png.

  report.py --kvm L1.json [--kvm L1.json ...] [--host HOST.json] --out DIR [--only GROUP,...]
            [--env KEY=VALUE ...]

Several --kvm files (one per L1 run, each with other groups) are merged; where two hold the same
key (the environment), the first one's is kept.

--only keeps the figures of some groups (boot, mem, blk, net, vsock, api; default all); --host is needed
when api is one of them. Exits 1 if any figure kept has no successful sample for a VMM it measures.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

import measure  # environment(): the host facts `measure.py startup` records

# (key in results.json, source file, key in source, unit, label, which is better).
# Every ratio is Ember/QEMU of the medians: for "lower" figures (times, memory) a ratio below 1.0
# means Ember is better, for "higher" figures (block and net MiB/s, IOPS) a ratio above 1.0 does.
# Each figure belongs to the group its key starts with (boot_timer is in boot), see group().
FIGURES = [
    ("boot_to_init_1vcpu_256mib", "kvm", "boot_to_init", "ms",
     "Boot to guest init, 1 vCPU / 256 MiB (exec to EMBER_GUEST_INIT)", "lower"),
    ("boot_timer_1vcpu_256mib", "kvm", "boot_timer", "ms",
     "Guest-reported boot time, 1 vCPU / 256 MiB (Ember boot timer)", "lower"),
    ("mem_overhead_1vcpu_256mib", "kvm", "mem_1_256", "MiB",
     "VMM memory overhead, idle guest, 1 vCPU / 256 MiB (Rss minus guest RAM)", "lower"),
    ("mem_overhead_2vcpu_1024mib", "kvm", "mem_2_1024", "MiB",
     "VMM memory overhead, idle guest, 2 vCPU / 1024 MiB (Rss minus guest RAM)", "lower"),
    ("run_true_cold_ms", "kvm", "run_true", "ms",
     "`ember run -- true` (exec to exit) vs QEMU booting the same kernel and ext4 image to `true`",
     "lower"),
    ("run_true_warm_ms", "kvm", "run_warm", "ms",
     "Ember only: `ember run --warm -- true` (exec to exit; restores the snapshot the first run cached)",
     "lower"),
    ("api_startup_l1", "kvm", "api_startup", "ms",
     "Start to API socket accepting, inside nested L1", "lower"),
    ("api_startup_host", "host", "api_startup", "ms",
     "Start to API socket accepting, on the host", "lower"),
    ("api_first_response_l1", "kvm", "api_first_response", "ms",
     "Start to first GET / answer, inside nested L1", "lower"),
    ("api_first_response_host", "host", "api_first_response", "ms",
     "Start to first GET / answer, on the host", "lower"),
]
# Block I/O (measure.py's "blk" samples): guest O_DIRECT on the raw virtio-blk disk. One figure
# per metric and Ember io_engine, each against the same QEMU (aio=io_uring) samples.
# (metric in the samples, key stem, unit, label)
BLK_METRICS = [
    ("seqread_mibps", "blk_seqread_mibps", "MiB/s", "sequential read, 1 MiB requests"),
    ("seqwrite_mibps", "blk_seqwrite_mibps", "MiB/s",
     "sequential write, 1 MiB requests + fdatasync"),
    ("randread_qd1_iops", "blk_randread_4k_qd1_iops", "IOPS", "4 KiB random read, queue depth 1"),
    ("randread_qd8_iops", "blk_randread_4k_qd8_iops", "IOPS",
     "4 KiB random read, queue depth 8 (8 threads)"),
]
for _metric, _stem, _unit, _label in BLK_METRICS:
    for _engine in ("async", "sync"):
        FIGURES.append((f"{_stem}_{_engine}", "kvm", f"blk:{_metric}:{_engine}", _unit,
                        f"Block {_label}: Ember io_engine {_engine.capitalize()} vs QEMU "
                        "aio=io_uring", "higher"))
# Net (measure.py's "net" samples): guest busybox nc / the host end of the TAP, QEMU vhost=off.
# (metric in the samples, key, unit, label, which is better)
NET_METRICS = [
    ("guest_to_host_mibps", "net_tcp_guest_to_host_mibps", "MiB/s",
     "Net TCP guest -> host, one stream, bulk (nc from a file; virtio-net on a TAP; QEMU "
     "vhost=off)", "higher"),
    ("guest_to_host_pipe_mibps", "net_tcp_guest_to_host_small_writes_mibps", "MiB/s",
     "Net TCP guest -> host, one stream, small writes (dd piped into nc: a few KiB a write)",
     "higher"),
    ("host_to_guest_mibps", "net_tcp_host_to_guest_mibps", "MiB/s",
     "Net TCP host -> guest, one stream (virtio-net on a TAP; QEMU vhost=off)", "higher"),
    ("rtt_ms", "net_rtt_ms", "ms",
     "Net ping RTT host -> guest, median of the run's pings", "lower"),
]
# Vsock (measure.py's "vsock" samples): guest vsock_perf.c / Ember's Unix socket (CONNECT
# scheme) or AF_VSOCK to QEMU's vhost-vsock-device. (metric in the samples, key, unit, label, better)
VSOCK_METRICS = [
    ("host_to_guest_mibps", "vsock_host_to_guest_mibps", "MiB/s",
     "Vsock host -> guest, one stream (Ember: Unix socket + CONNECT; QEMU: vhost-vsock)", "higher"),
    ("guest_to_host_mibps", "vsock_guest_to_host_mibps", "MiB/s",
     "Vsock guest -> host, one stream (Ember: Unix socket + CONNECT; QEMU: vhost-vsock)", "higher"),
    ("connect_ms", "vsock_connect_ms", "ms",
     "Vsock host -> guest connect + 1-byte round trip, median of the run's connects", "lower"),
]
# Groups whose samples hold several metrics per run (see net_samples).
RUN_METRICS = {"net": NET_METRICS, "vsock": VSOCK_METRICS}
for _group, _metrics in RUN_METRICS.items():
    for _metric, _key, _unit, _label, _better in _metrics:
        FIGURES.append((_key, "kvm", f"{_group}:{_metric}", _unit, _label, _better))
# Snapshots (measure.py's "snap" samples, see snapbench.py): Ember's Full snapshot (File back end)
# against QEMU's migration stream saved to a file and loaded with -incoming.
# (key in results.json, key in the snap samples, sample field or None for "value", unit, label)
SNAP_FIGURES = [
    ("snap_restore_to_respond_ms", "restore_to_respond", None, "ms",
     "Snapshot restore to guest responding, 1 vCPU / 256 MiB (exec to first console answer; "
     "Ember: PUT /snapshot/load File + resume_vm; QEMU: -incoming exec:cat)"),
    ("snap_cold_boot_to_respond_ms", "cold_to_respond", None, "ms",
     "Cold boot to guest responding, same guest (exec to first console answer)"),
    ("snap_create_idle_ms", "create_idle", None, "ms",
     "Snapshot create, idle 256 MiB guest (Ember: PUT /snapshot/create Full; QEMU: migrate to "
     "exec:cat > FILE)"),
    ("snap_create_dirty128_ms", "create_dirty128", None, "ms",
     "Snapshot create, 256 MiB guest with 128 MiB of random data in tmpfs"),
    ("snap_size_idle_mib", "create_idle", "size_mib", "MiB",
     "Snapshot size on disk, idle guest (Ember: memory file's allocated blocks + state file; "
     "QEMU: the stream)"),
    ("snap_size_dirty128_mib", "create_dirty128", "size_mib", "MiB",
     "Snapshot size on disk, 128 MiB dirtied"),
    ("snap_vmm_load_ms", "restore_to_respond", "vmm_load_ms", "ms",
     "Ember only: load request to vCPUs running (Ember's own log of PUT /snapshot/load)"),
    ("snap_fanout1_respond_ms", "fanout", "baseline_ms", "ms",
     "Ember only: one clone restored alone by scripts/clone, exec to console answer"),
    ("snap_fanout8_respond_p50_ms", "fanout", "p50_ms", "ms",
     "Ember only: 8 clones of one snapshot at once (scripts/clone), exec to answer, p50"),
    ("snap_fanout8_respond_p95_ms", "fanout", None, "ms",
     "Ember only: 8 clones at once, exec to answer, p95"),
    ("snap_fanout8_rss_mib", "fanout", "rss_mib", "MiB",
     "Ember only: 8 clones' summed Rss once all answered"),
    ("snap_fanout8_pss_mib", "fanout", "pss_mib", "MiB",
     "Ember only: 8 clones' summed Pss (shared page cache counted once)"),
]
for _key, _skey, _field, _unit, _label in SNAP_FIGURES:
    FIGURES.append((_key, "kvm", f"snap:{_key}", _unit, _label, "lower"))
GROUPS = ("boot", "mem", "blk", "net", "vsock", "api", "snap", "run")
DECIMALS = {"net_rtt_ms": 2, "vsock_connect_ms": 2}  # in results.md; otherwise by unit (see fmt)


def group(key):
    return key.split("_", 1)[0]


def percentile(values, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    v = sorted(values)
    if not v:
        return None
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(samples):
    ok = [s["value"] for s in samples if s.get("ok")]
    return {"n": len(samples), "ok": len(ok), "failed": len(samples) - len(ok),
            "median": percentile(ok, 50), "p10": percentile(ok, 10), "p90": percentile(ok, 90)}


def boot_timer_samples(boot):
    """Ember's Guest-boot-time from the boot-to-init runs, in ms."""
    out = []
    for s in boot.get("ember", []):
        if s.get("ok") and s.get("boot_timer_us") is not None:
            out.append({"ok": True, "value": s["boot_timer_us"] / 1000.0, "run": s["run"]})
        else:
            out.append({"ok": False, "run": s.get("run"),
                        "error": s.get("error", "no Guest-boot-time line on stderr")})
    return {"ember": out}


def first_response_samples(startup):
    """The GET / answer time recorded with each API start-up sample, in ms."""
    out = []
    for s in startup.get("ember", []):
        if s.get("ok") and s.get("first_get_response_ms") is not None:
            out.append({"ok": True, "value": s["first_get_response_ms"], "run": s["run"]})
        else:
            out.append({"ok": False, "run": s.get("run"),
                        "error": s.get("error", "no HTTP 200 answer to GET /")})
    return {"ember": out}


def blk_samples(blk, metric, engine):
    """One block metric out of the per-run samples: Ember with io_engine `engine`, and QEMU."""
    out = {}
    for vmm, variant in (("ember", f"ember_{engine}"), ("qemu", "qemu")):
        if variant not in blk:
            continue
        out[vmm] = []
        for s in blk[variant]:
            if s.get("ok") and s.get("values", {}).get(metric) is not None:
                out[vmm].append({"ok": True, "value": s["values"][metric], "run": s["run"]})
            else:
                out[vmm].append({"ok": False, "run": s.get("run"),
                                 "error": s.get("error", f"no {metric} from the guest")})
    return out


def net_samples(net, metric):
    """One net (or vsock) metric out of the per-run samples. A run that failed later still counts
    for the metrics it measured (e.g. the RTT of a run whose transfer broke)."""
    out = {}
    for vmm in ("ember", "qemu"):
        if vmm not in net:
            continue
        out[vmm] = []
        for s in net[vmm]:
            v = s.get("values", {}).get(metric)
            if v is not None:
                out[vmm].append({"ok": True, "value": v, "run": s["run"]})
            else:
                out[vmm].append({"ok": False, "run": s.get("run"),
                                 "error": s.get("error", f"no {metric}")})
    return out


def snap_samples(snap, skey, field):
    """One snapshot figure: the samples of snap[skey], their "value" or another field."""
    out = {}
    for vmm, samples in snap.get(skey, {}).items():
        if field == "vmm_load_ms" and vmm != "ember":
            continue
        out[vmm] = []
        for s in samples:
            v = s.get("value") if field is None else s.get(field)
            if s.get("ok") and v is not None:
                out[vmm].append({"ok": True, "value": v, "run": s.get("run")})
            else:
                out[vmm].append({"ok": False, "run": s.get("run"),
                                 "error": s.get("error", f"no {field or 'value'}")})
    return out


def better_if(fig):
    if fig["ratio"] is None:
        return "n/a"
    return "> 1" if fig["better"] == "higher" else "< 1"


def fmt(st, unit, nd=None):
    if st is None or st["median"] is None:
        return "n/a" if st is None else f"no sample ({st['failed']} failed)"
    if nd is None:
        nd = {"MiB": 2, "MiB/s": 1}.get(unit, 0)
    s = f"{st['median']:.{nd}f} ({st['p10']:.{nd}f}–{st['p90']:.{nd}f}) {unit}"
    if st["failed"]:
        s += f", {st['failed']}/{st['n']} failed"
    return s


LOWER_COLOR, HIGHER_COLOR = 0x4477AA, 0x44AA66


def plot(figs, out_dir):
    rows = [(k, f["ratio"], f["better"]) for k, f in figs.items() if f["ratio"] is not None]
    if not rows:
        print("bench: no Ember/QEMU ratio to plot; ratios.png not written", file=sys.stderr)
        return
    dat = os.path.join(out_dir, "ratios.dat")
    with open(dat, "w") as f:
        for i, (k, r, better) in enumerate(rows):
            color = HIGHER_COLOR if better == "higher" else LOWER_COLOR
            f.write(f'{i} {r:.4f} "{k.replace("_", "-")}" {color}\n')
    width = max(900, 70 * len(rows) + 160)
    term = f"pngcairo size {width},660 font ',10'"
    if subprocess.run(["gnuplot", "-e", "set terminal pngcairo"],
                      capture_output=True).returncode != 0:
        term = f"png size {width},660"
    ymax = max([r for _, r, _ in rows] + [1.0]) * 1.35
    script = f"""
set terminal {term}
set output '{os.path.join(out_dir, "ratios.png")}'
set title 'Ember / QEMU microvm (ratio of medians; the red line is parity)'
set ylabel 'Ember / QEMU'
set style fill solid 0.6 border -1
set boxwidth 0.6
set xrange [-0.6:{len(rows) - 0.4}]
set yrange [0:{ymax:.3f}]
set xtics rotate by 35 right
set lmargin 18
set bmargin 11
set grid ytics
set key top left opaque box
set arrow from -0.6,1 to {len(rows) - 0.4},1 nohead lw 2 lc rgb 'red' front
plot '{dat}' using 1:2:4:xtic(3) with boxes lc rgb variable notitle, \\
     '' using 1:2:(sprintf('%.2f', $2)) with labels offset 0,1 notitle, \\
     NaN with boxes lc rgb '#{LOWER_COLOR:06x}' title 'time, memory: below 1.0 = Ember better', \\
     NaN with boxes lc rgb '#{HIGHER_COLOR:06x}' title 'MiB/s, IOPS: above 1.0 = Ember better'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.unlink(dat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvm", action="append", required=True)
    ap.add_argument("--host")
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default=",".join(GROUPS))
    ap.add_argument("--env", action="append", default=[])
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    if not only or not only <= set(GROUPS):
        ap.error(f"--only takes a comma-separated subset of {','.join(GROUPS)}")
    if "api" in only and not args.host:
        ap.error("--host is needed for the api figures")
    src = {"kvm": {}, "host": {"environment": {}}}
    for path in args.kvm:
        with open(path) as f:
            src["kvm"] = {**json.load(f), **src["kvm"]}
    if args.host:
        with open(args.host) as f:
            src["host"] = json.load(f)
    src["kvm"]["boot_timer"] = boot_timer_samples(src["kvm"].get("boot_to_init", {}))
    for name in ("kvm", "host"):
        src[name]["api_first_response"] = first_response_samples(src[name].get("api_startup", {}))
    blk = src["kvm"].get("blk")
    if blk:
        for metric, _, _, _ in BLK_METRICS:
            for engine in ("async", "sync"):
                src["kvm"][f"blk:{metric}:{engine}"] = blk_samples(blk, metric, engine)
    for name, metrics in RUN_METRICS.items():
        runs = src["kvm"].get(name)
        for metric, *_ in metrics if runs else ():
            src["kvm"][f"{name}:{metric}"] = net_samples(runs, metric)

    snap = src["kvm"].get("snap")
    for key, skey, field, _, _ in SNAP_FIGURES if snap else ():
        src["kvm"][f"snap:{key}"] = snap_samples(snap, skey, field)

    figs, missing = {}, []
    for key, where, skey, unit, label, better in FIGURES:
        if group(key) not in only:
            continue
        raw = src[where].get(skey, {})
        fig = {"description": label, "unit": unit, "better": better, "samples": raw, "stats": {}}
        if not raw:
            missing.append(f"{key} (not measured)")
        for vmm in ("ember", "qemu"):
            if vmm in raw:
                fig["stats"][vmm] = stats(raw[vmm])
                if fig["stats"][vmm]["median"] is None:
                    missing.append(f"{key}/{vmm}")
        e, q = fig["stats"].get("ember"), fig["stats"].get("qemu")
        fig["ratio"] = (e["median"] / q["median"]
                        if e and q and e["median"] is not None and q["median"]
                        else None)
        figs[key] = fig

    kenv, henv = src["kvm"]["environment"], src["host"]["environment"] or measure.environment()
    env = {"nested": kenv.get("in_l1", False),
           "host_kernel": henv["kernel"], "host_cpu_model": henv["cpu_model"],
           "host_nproc": henv["nproc"], "groups": sorted(only),
           "l1_kernel": kenv["kernel"] if kenv.get("in_l1") else None,
           "l1_cpu_model": kenv["cpu_model"] if kenv.get("in_l1") else None,
           "qemu_version": kenv.get("qemu_version"), "ember_version": kenv.get("ember_version"),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if src["kvm"].get("blk_params") and "blk" in only:
        env["blk_params"] = src["kvm"]["blk_params"]
    if src["kvm"].get("net_params") and "net" in only:
        env["net_params"] = src["kvm"]["net_params"]
    if src["kvm"].get("snap_params") and "snap" in only:
        env["snap_params"] = src["kvm"]["snap_params"]
        r = figs.get("snap_restore_to_respond_ms", {}).get("stats", {}).get("ember")
        c = figs.get("snap_cold_boot_to_respond_ms", {}).get("stats", {}).get("ember")
        if r and c and r["median"] is not None and c["median"]:
            env["snap_restore_over_cold_ember"] = r["median"] / c["median"]
        f = figs.get("snap_fanout8_respond_p95_ms", {}).get("stats", {}).get("ember")
        o = figs.get("snap_fanout1_respond_ms", {}).get("stats", {}).get("ember")
        if f and o and f["median"] is not None and o["median"]:
            env["snap_fanout8_p95_over_one"] = f["median"] / o["median"]
    if src["kvm"].get("vsock_params") and "vsock" in only:
        env["vsock_params"] = src["kvm"]["vsock_params"]
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        # The block runs as measured too: every guest's BLK_* lines, exit statuses, VMM log notes.
        # The net runs too: ping details, guest values, VMM log notes.
        json.dump({"environment": env, "figures": figs,
                   "block_runs": src["kvm"].get("blk"), "net_runs": src["kvm"].get("net"),
                  "vsock_runs": src["kvm"].get("vsock"), "snap_runs": snap}, f, indent=1)

    lines = ["| figure | Ember median (p10–p90) | QEMU median (p10–p90) | Ember/QEMU "
             "| Ember better if |",
             "|---|---|---|---|---|"]
    for key, fig in figs.items():
        ratio = "n/a" if fig["ratio"] is None else f"{fig['ratio']:.2f}"
        nd = DECIMALS.get(key)
        lines.append(f"| {fig['description']} "
                     f"| {fmt(fig['stats'].get('ember'), fig['unit'], nd)} "
                     f"| {fmt(fig['stats'].get('qemu'), fig['unit'], nd)} | {ratio} "
                     f"| {better_if(fig)} |")
    where = "nested KVM (L1 under QEMU TCG)" if env["nested"] else "host KVM"
    lines += ["", f"Measured {env['date']} in {where}; host {env['host_cpu_model']}, "
              f"kernel {env['host_kernel']}" +
              (f"; L1 kernel {env['l1_kernel']}" if env["l1_kernel"] else "") +
              (f" (its KVM's paging: {env['l1_paging']})" if env.get("l1_paging") else "") +
              f"; {env['ember_version']}; {env['qemu_version']}."]
    bp = env.get("blk_params")
    if bp:
        lines += ["", f"Block I/O: guest `blkbench` (scripts/bench-lib/blkbench.c), O_DIRECT on "
                  f"the raw virtio-blk disk (/dev/vda, a {bp['disk_mib']} MiB raw file on L1's "
                  f"tmpfs), {bp['vcpus']} vCPU / {bp['mem_mib']} MiB; {bp['seq_mib']} MiB "
                  f"sequential in {bp['bs_kib']} KiB requests, random reads for "
                  f"{bp['rand_secs']} s each. Ember: cache_type Writeback; QEMU: "
                  "aio=io_uring,cache=writeback (both buffered on the host, both offer flush). "
                  "Ratios are Ember/QEMU, so above 1.0 means Ember moved more data."]
    npar = env.get("net_params")
    if npar:
        lines += ["", f"Net: {npar['vcpus']} vCPU / {npar['mem_mib']} MiB guest, virtio-net on a "
                  f"fresh TAP per run ({npar['tap']}, {npar['host_ip']} on the host side, "
                  f"{npar['guest_ip']} in the guest) in a network namespace of its own. One TCP "
                  f"stream of {npar['mib']} MiB each way between the guest's busybox nc and a "
                  "Python socket on the host side, timed there (host -> guest: connect to the "
                  "guest's FIN after it read everything; guest -> host: accept to FIN), then "
                  "the same guest -> host again from `dd | nc`, whose few-KiB writes make the "
                  "guest's TCP send many small segments: it weighs the cost per packet, and "
                  "depends on how soon the device completes transmitted frames (a segment still "
                  "held by the device lets TCP merge the next writes into it). RTT: "
                  f"median of {npar['pings']} busybox pings from the host side at "
                  f"{npar['ping_interval_s']} s intervals, after one untimed ping. QEMU: "
                  "-netdev tap,vhost=off, so both datapaths run in the VMM's user space."]
    vp = env.get("vsock_params")
    if vp:
        lines += ["", f"Vsock: {vp['vcpus']} vCPU / {vp['mem_mib']} MiB guest with CID "
                  f"{vp['cid']} running `vsockperf` (scripts/bench-lib/vsock_perf.c) on port "
                  f"{vp['port']}, one request per stream, timed on the host: {vp['mib']} MiB "
                  "host -> guest (first byte sent to the guest's 1-byte acknowledgement after it "
                  "read everything) and guest -> host (request sent to the last byte read); "
                  f"connect: median of {vp['pings']} new streams, each timed from connect() to "
                  "the guest's answer to one byte. Ember: a Python AF_UNIX socket on its "
                  "uds_path, `CONNECT <port>` and `OK <host_port>` first (Firecracker's "
                  "docs/vsock.md), datapath in Ember's process; QEMU: -device "
                  "vhost-vsock-device, a Python AF_VSOCK socket to the CID, datapath in L1's "
                  "kernel (vhost_vsock)."]
    sp = env.get("snap_params")
    if sp:
        lines += ["", f"Snapshots: {sp['vcpus']} vCPU / {sp['mem_mib']} MiB guest whose init "
                  "answers every console line with PONG<line>; each run writes a line to the "
                  f"VMM's stdin every {sp['ping_interval_ms']:.0f} ms (a restore from its exec "
                  "on, a cold boot from the guest's ready line on), so "
                  "'responding' is the same event for a cold boot and a restore, for both VMMs. "
                  f"dirty128: the guest first writes {sp['dirty_mib']} MiB of /dev/urandom into "
                  "a tmpfs. Snapshot files live on L1's tmpfs. Ember: Full snapshot, memory file "
                  "mapped MAP_PRIVATE at load (pages fault in lazily); QEMU 7.2: `migrate` to "
                  "exec:cat (no file: URI before 8.2) and `-incoming exec:cat FILE`, which reads "
                  "all of it before the guest runs."]
        if env.get("snap_restore_over_cold_ember") is not None:
            lines += ["", "Ember restore / Ember cold boot (medians, to responding): "
                      f"{env['snap_restore_over_cold_ember']:.3f} (goal <= 0.2)."]
        if env.get("snap_fanout8_p95_over_one") is not None:
            lines += ["", "Ember fan-out: p95 of 8 clones at once / one clone alone: "
                      f"{env['snap_fanout8_p95_over_one']:.2f} (goal <= 2; L1 has 2 vCPUs for 8 "
                      "clones)."]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    sys.stdout.write(md)

    plot(figs, args.out)
    if missing:
        print(f"bench: no successful sample for: {', '.join(missing)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
