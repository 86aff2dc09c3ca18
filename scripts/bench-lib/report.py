#!/usr/bin/env python3
"""Turns measure.py's raw samples into DIR/results.json, DIR/results.md and DIR/ratios.png.

  report.py --kvm L1.json --host HOST.json --out DIR [--env KEY=VALUE ...]

Exits 1 if any figure has no successful sample for a VMM it measures.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys

# (key in results.json, source file, key in source, unit, label)
FIGURES = [
    ("boot_to_init_1vcpu_256mib", "kvm", "boot_to_init", "ms",
     "Boot to guest init, 1 vCPU / 256 MiB (exec to EMBER_GUEST_INIT)"),
    ("boot_timer_1vcpu_256mib", "kvm", "boot_timer", "ms",
     "Guest-reported boot time, 1 vCPU / 256 MiB (Ember boot timer)"),
    ("mem_overhead_1vcpu_256mib", "kvm", "mem_1_256", "MiB",
     "VMM memory overhead, idle guest, 1 vCPU / 256 MiB (Rss minus guest RAM)"),
    ("mem_overhead_2vcpu_1024mib", "kvm", "mem_2_1024", "MiB",
     "VMM memory overhead, idle guest, 2 vCPU / 1024 MiB (Rss minus guest RAM)"),
    ("api_startup_l1", "kvm", "api_startup", "ms",
     "Start to API socket accepting, inside nested L1"),
    ("api_startup_host", "host", "api_startup", "ms",
     "Start to API socket accepting, on the host"),
    ("api_first_response_l1", "kvm", "api_first_response", "ms",
     "Start to first GET / answer, inside nested L1"),
    ("api_first_response_host", "host", "api_first_response", "ms",
     "Start to first GET / answer, on the host"),
]


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


def fmt(st, unit):
    if st is None or st["median"] is None:
        return "n/a" if st is None else f"no sample ({st['failed']} failed)"
    nd = 2 if unit == "MiB" else 0
    s = f"{st['median']:.{nd}f} ({st['p10']:.{nd}f}–{st['p90']:.{nd}f}) {unit}"
    if st["failed"]:
        s += f", {st['failed']}/{st['n']} failed"
    return s


def plot(figs, out_dir):
    rows = [(k, f["ratio"]) for k, f in figs.items() if f["ratio"] is not None]
    dat = os.path.join(out_dir, "ratios.dat")
    with open(dat, "w") as f:
        for i, (k, r) in enumerate(rows):
            f.write(f'{i} {r:.4f} "{k.replace("_", "-")}"\n')
    term = "pngcairo size 900,520 font ',10'"
    if subprocess.run(["gnuplot", "-e", "set terminal pngcairo"],
                      capture_output=True).returncode != 0:
        term = "png size 900,520"
    ymax = max([r for _, r in rows] + [1.0]) * 1.25
    script = f"""
set terminal {term}
set output '{os.path.join(out_dir, "ratios.png")}'
set title 'Ember / QEMU microvm (median ratio; below 1.0 = Ember better)'
set ylabel 'Ember / QEMU'
set style fill solid 0.6 border -1
set boxwidth 0.6
set xrange [-0.6:{len(rows) - 0.4}]
set yrange [0:{ymax:.3f}]
set grid ytics
set key off
set arrow from -0.6,1 to {len(rows) - 0.4},1 nohead lw 2 lc rgb 'red' front
plot '{dat}' using 1:2:xtic(3) with boxes lc rgb '#4477aa', \\
     '' using 1:2:(sprintf('%.2f', $2)) with labels offset 0,1
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)
    os.unlink(dat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvm", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--env", action="append", default=[])
    args = ap.parse_args()
    src = {}
    for name in ("kvm", "host"):
        with open(getattr(args, name)) as f:
            src[name] = json.load(f)
    src["kvm"]["boot_timer"] = boot_timer_samples(src["kvm"].get("boot_to_init", {}))
    for name in ("kvm", "host"):
        src[name]["api_first_response"] = first_response_samples(src[name].get("api_startup", {}))

    figs, missing = {}, []
    for key, where, skey, unit, label in FIGURES:
        raw = src[where].get(skey, {})
        fig = {"description": label, "unit": unit, "samples": raw, "stats": {}}
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

    kenv, henv = src["kvm"]["environment"], src["host"]["environment"]
    env = {"nested": kenv.get("in_l1", False),
           "host_kernel": henv["kernel"], "host_cpu_model": henv["cpu_model"],
           "host_nproc": henv["nproc"],
           "l1_kernel": kenv["kernel"] if kenv.get("in_l1") else None,
           "l1_cpu_model": kenv["cpu_model"] if kenv.get("in_l1") else None,
           "qemu_version": kenv.get("qemu_version"), "ember_version": kenv.get("ember_version"),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"environment": env, "figures": figs}, f, indent=1)

    lines = ["| figure | Ember median (p10–p90) | QEMU median (p10–p90) | Ember/QEMU |",
             "|---|---|---|---|"]
    for key, fig in figs.items():
        ratio = "n/a" if fig["ratio"] is None else f"{fig['ratio']:.2f}"
        lines.append(f"| {fig['description']} | {fmt(fig['stats'].get('ember'), fig['unit'])} "
                     f"| {fmt(fig['stats'].get('qemu'), fig['unit'])} | {ratio} |")
    where = "nested KVM (L1 under QEMU TCG)" if env["nested"] else "host KVM"
    lines += ["", f"Measured {env['date']} in {where}; host {env['host_cpu_model']}, "
              f"kernel {env['host_kernel']}" +
              (f"; L1 kernel {env['l1_kernel']}" if env["l1_kernel"] else "") +
              f"; {env['ember_version']}; {env['qemu_version']}."]
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
