"""The tables (Markdown) and the plot (PNG) of ``bench/gpu_cr.py``'s JSON.

    python3 bench/gpu_cr_report.py bench/results/gpu_cr.json [OUT_DIR]   # writes gpu_cr.md and gpu_cr.png

Ceilings, from the same run: checkpoint = the GPU bytes at the driver's best measured checkpoint rate at that size
(the driver probe and both flows' calls on processes of that size, each call's bytes its own process's: the rate
varies with the size, 3.2-3.6 GB/s from 1 to 32 GiB in one THP mode, and gpucr calls the driver once per process, so
no flow can beat the driver's own call at that size; the report also gives the ratio against any size's best) + the
image bytes at the disk's sustained O_DIRECT write rate (the ``--probe-gib`` file; without it the best of the small probe's O_DIRECT and buffered + fsync rates); restore = the image bytes at the disk's best
cold read rate (of the sustained probe when it ran its reads: O_DIRECT, buffered, buffered in parallel threads) + the
GPU bytes at the driver's best restore rate. The plot needs
matplotlib (a bench tool only: ``.venv/bin/pip install matplotlib``; not one of gpucr's requirements).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

GIB = 1 << 30
#: the parallel cold read probe's threads (bench/gpu_cr.py PREFETCH_THREADS)
PREFETCH_THREADS = 8


#: whose GPU bytes a flow's driver calls moved: gpucr's summary has them; the baseline's process holds the same data
#: at the same point (leave-running first, then kill + restore, each flow on its own process)
_BYTES_OF = {"baseline_lr": "gpucr_lr", "baseline_ckpt": "gpucr_ckpt", "baseline_restore": "gpucr_ckpt",
             "gpucr_restore": "gpucr_restore"}


def _gpu_bytes(row: dict[str, Any], flow: str = "") -> int:
    """The GPU bytes behind ``flow``'s driver calls, else the row's (its checkpoint's)."""
    for k in ((_BYTES_OF.get(flow, flow),) if flow else ()) + ("gpucr_ckpt", "gpucr_lr"):
        if row.get(k, {}).get("gpu_bytes"):
            return int(row[k]["gpu_bytes"])
    return int(row["gib"] * GIB)


def _driver_rates(doc: dict[str, Any], gib: float | None = None) -> tuple[list[float], list[float]]:
    """The driver's measured checkpoint and restore rates (GPU bytes / call time) of every call, or only of the
    calls on a process holding ``gib`` GiB of data (both flows, and the driver probe of that size)."""
    ck, rs = [], []
    for p in doc.get("driver_probe", []):
        if p.get("gpu_bytes") and gib in (None, p.get("gib")):
            ck.append(p["gpu_bytes"] / p["checkpoint_s"])
            rs.append(p["gpu_bytes"] / p["restore_s"])
    for r in doc.get("runs", []):
        if gib not in (None, r.get("gib")):
            continue
        for k in ("gpucr_lr", "gpucr_ckpt"):
            t = r.get(k, {}).get("timings_s", {})
            if t.get("cuda-checkpoint"):
                ck.append(_gpu_bytes(r, k) / t["cuda-checkpoint"])
        t = r.get("gpucr_restore", {}).get("timings_s", {})
        if t.get("cuda-restore"):
            rs.append(_gpu_bytes(r, "gpucr_restore") / t["cuda-restore"])
        for k in ("baseline_lr", "baseline_ckpt"):
            if r.get(k, {}).get("cuda_suspend"):
                ck.append(_gpu_bytes(r, k) / r[k]["cuda_suspend"]["checkpoint"])
        for k in ("baseline_lr", "baseline_restore"):
            if r.get(k, {}).get("cuda_resume"):
                rs.append(_gpu_bytes(r, k) / r[k]["cuda_resume"]["restore"])
    return ck, rs


def rates(doc: dict[str, Any], gib: float | None = None) -> dict[str, float]:
    """Best measured bytes/s: driver checkpoint and restore (of the calls at ``gib`` GiB when given: the driver's
    rate depends on the process's size, see the module docstring), disk write and read."""
    ck, rs = _driver_rates(doc, gib)
    c = doc.get("ceilings", {})
    write = c.get("disk_write_direct_sustained_GBps") or max(c.get("disk_write_direct_GBps", 0),
                                                             c.get("disk_write_buffered_GBps", 0))
    return {"driver_ckpt": max(ck, default=0.0), "driver_restore": max(rs, default=0.0), "disk_write": 1e9 * write,
            "disk_read": 1e9 * read_rate(c)}


def read_rate(c: dict[str, Any]) -> float:
    """The restore ceiling's cold read rate (GB/s): the best of the sustained probe's reads (O_DIRECT, buffered, the
    parallel buffered one) when it ran them, as for the write rate; else the best of any read."""
    sustained = [c.get(k, 0) for k in ("disk_read_buffered_sustained_GBps", "disk_read_buffered_parallel_sustained_GBps")]
    if any(sustained):
        return max(*sustained, c.get("disk_read_direct_sustained_GBps", 0))
    return max(c.get("disk_read_direct_GBps", 0), c.get("disk_read_buffered_GBps", 0),
               c.get("disk_read_direct_sustained_GBps", 0))


def write_probe(doc: dict[str, Any]) -> str:
    """Which disk probe the checkpoint ceiling's write rate comes from."""
    c = doc.get("ceilings", {})
    if c.get("disk_write_direct_sustained_GBps"):
        return f"the sustained O_DIRECT probe ({c.get('disk_sustained_gib'):g} GiB)"
    return f"the best of the {c.get('disk_probe_gib', '?')} GiB probe"


def read_probe(doc: dict[str, Any]) -> str:
    """Which disk probe the restore ceiling's read rate comes from."""
    c = doc.get("ceilings", {})
    if c.get("disk_read_buffered_sustained_GBps"):
        return f"the best cold read of the sustained probe ({c.get('disk_sustained_gib'):g} GiB)"
    return "the best cold read of any probe"


def ceilings(doc: dict[str, Any], row: dict[str, Any], any_size: bool = False) -> tuple[float, float]:
    """(checkpoint, restore) ceilings in seconds for one size's run: the driver at its best rate measured at this
    size (``any_size``: at any size of the run), the disk at its measured rates."""
    r = rates(doc, None if any_size else row["gib"])
    g = _gpu_bytes(row)
    img = row.get("gpucr_ckpt", {}).get("image_bytes") or row.get("baseline_ckpt", {}).get("image_bytes") or 0
    if not all(r.values()):
        return 0.0, 0.0
    return g / r["driver_ckpt"] + img / r["disk_write"], img / r["disk_read"] + g / r["driver_restore"]


def sequential_s(p: dict[str, Any]) -> float | None:
    """One after the other = the two checkpoints' own wall times added (a run before 2026-12-01 also timed the
    removal of the first checkpoint between them in its ``sequential_s``)."""
    walls = [s.get("wall_s") for s in p.get("sequential", [])]
    return round(sum(walls), 3) if walls and all(walls) else p.get("sequential_s")


def _f(v: Any) -> str:
    if v is None or v == "":
        return "-"
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}"


def _steps(run: dict[str, Any]) -> str:
    """gpucr's steps of ``run`` that took 0.05 s or more, with their times (its summary's ``timings_s``)."""
    return ", ".join(f"{k} {_f(v)}" for k, v in run.get("timings_s", {}).items() if v >= 0.05)


def _x(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _ok(row: dict[str, Any], k: str) -> str:
    c = row.get(k, {}).get("check")
    return "-" if not c else ("identical" if c["identical"] else "DIFFERENT") + f", steps {c['steps'][0]}->{c['steps'][1]}"


def markdown(doc: dict[str, Any]) -> str:
    e, c = doc["env"], doc.get("ceilings", {})
    r = rates(doc)
    out = ["# gpucr on a real GPU: checkpoint/restore speed against the by-hand baseline and the hardware's ceilings", "",
           f"- date: {e.get('date')}; machine: {e.get('host')} ({e.get('cpus')} CPUs, kernel {e.get('kernel')})",
           f"- GPU: {'; '.join(e.get('gpus', []))}; THP mode of the node: `{e.get('thp')}`"
           f"{' (the driver probe also ran with `always`)' if e.get('thp_always_allowed') else ''}",
           f"- {e.get('criu')}; checkpoint filesystem: `{e.get('checkpoint_fs')}`", ""]
    if doc.get("env_first_call"):
        f = doc["env_first_call"]
        out += [f"The ceilings, the driver probe and the rows before this call's were measured by the first call of the "
                f"same lease ({f.get('date')}, {f.get('host')}).", ""]
    out += ["## Ceilings measured in this run", "",
            *([f"- disk (checkpoint filesystem, {c.get('disk_probe_gib', '?')} GiB file): write O_DIRECT "
               f"{c.get('disk_write_direct_GBps')} GB/s, buffered + fsync {c.get('disk_write_buffered_GBps')} GB/s; "
               f"read O_DIRECT {c.get('disk_read_direct_GBps')} GB/s, buffered cold {c.get('disk_read_buffered_GBps')} "
               "GB/s"] if c.get("disk_probe_gib") else []),
            *([f"- disk, sustained ({c['disk_sustained_gib']:g} GiB file, O_DIRECT): write "
               f"{c.get('disk_write_direct_sustained_GBps')} GB/s, read {c.get('disk_read_direct_sustained_GBps')} GB/s"]
              if c.get("disk_sustained_gib") else []),
            *([f"- disk, sustained ({c['disk_sustained_gib']:g} GiB file, buffered): write + fsync "
               f"{c.get('disk_write_buffered_sustained_GBps')} GB/s, read cold "
               f"{c.get('disk_read_buffered_sustained_GBps')} GB/s, read cold in "
               f"{PREFETCH_THREADS} threads {c.get('disk_read_buffered_parallel_sustained_GBps')} GB/s"]
              if c.get("disk_read_buffered_sustained_GBps") else []),
            *([f"- pinned device-to-host copy: {c.get('pinned_d2h_GBps')} GB/s"] if c.get("pinned_d2h_GBps") else []),
            f"- driver (best measured at any size, GPU bytes / call time): checkpoint {r['driver_ckpt'] / 1e9:.2f} "
            f"GB/s, restore {r['driver_restore'] / 1e9:.2f} GB/s"]
    for p in doc.get("driver_probe", []):
        defrag = f", defrag `{p['defrag']}`" if p.get("defrag") else ""
        huge = (f" (the process's memory on huge pages while checkpointed: {p['anon_huge_bytes'] / GIB:.1f} GiB)"
                if "anon_huge_bytes" in p else "")
        out.append(f"  - driver probe {p['gib']:g} GiB data ({p['gpu_bytes'] / GIB:.2f} GiB GPU memory), THP "
                   f"`{p['thp']}`{defrag}{huge}: checkpoint {p['checkpoint_s']:.2f} s "
                   f"({p['gpu_bytes'] / p['checkpoint_s'] / 1e9:.2f} GB/s), restore {p['restore_s']:.2f} s "
                   f"({p['gpu_bytes'] / p['restore_s'] / 1e9:.2f} GB/s); "
                   f"data {'identical' if p['check']['identical'] else 'DIFFERENT'}")
    if not doc.get("runs") and not doc.get("parallel"):  # a driver-probe-only call
        return "\n".join(out) + "\n"
    out += ["", "## Checkpoint to a durable checkpoint (fsync included, both flows)", "",
            f"The ceiling's disk write rate: {r['disk_write'] / 1e9:.2f} GB/s, from {write_probe(doc)}.", "",
            "| GiB data | GPU GiB | images GiB | baseline s | gpucr s | gpucr / baseline | ceiling s | gpucr / ceiling | "
            "gpucr steps | peak host mem GiB (b / g) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc.get("runs", []):
        b, g = row.get("baseline_ckpt", {}), row.get("gpucr_ckpt", {})
        cc, _ = ceilings(doc, row)
        steps = _steps(g)
        out.append(f"| {row['gib']:g} | {_gpu_bytes(row) / GIB:.2f} | {(g.get('image_bytes') or 0) / GIB:.2f} | "
                   f"{_f(b.get('total_s'))} | {_f(g.get('wall_s'))} | {_x(g.get('wall_s'), b.get('total_s'))} | "
                   f"{_f(cc)} | {_x(g.get('wall_s'), cc)} | {steps} | {b.get('peak_mem_gib', '-')} / "
                   f"{g.get('peak_mem_gib', '-')} |")
    if doc.get("runs"):
        any_size = [(row, ceilings(doc, row, any_size=True)[0]) for row in doc["runs"]]
        out += ["", "The driver's rate depends on the process's size (the run's calls at each size: " + "; ".join(
            f"{row['gib']:g} GiB {max(_driver_rates(doc, row['gib'])[0], default=0) / 1e9:.2f} GB/s"
            for row in doc["runs"]) + "), so each row's ceiling takes the driver's best call at that size. With the "
            "best rate of any size instead: " + "; ".join(
                f"{row['gib']:g} GiB ceiling {_f(cc)} s, gpucr {_x(row.get('gpucr_ckpt', {}).get('wall_s'), cc)}"
                for row, cc in any_size) + "."]
    out += ["", "Baseline steps: " + "; ".join(
        f"{row['gib']:g} GiB: lock {_f(row['baseline_ckpt']['cuda_suspend']['lock'])}, CUDA checkpoint "
        f"{_f(row['baseline_ckpt']['cuda_suspend']['checkpoint'])} (helper {_f(row['baseline_ckpt']['cuda_suspend']['wall'])}), "
        f"criu dump {_f(row['baseline_ckpt']['criu_dump_s'])}, fsync {_f(row['baseline_ckpt']['fsync_s'])}"
        for row in doc.get("runs", []) if "baseline_ckpt" in row)]
    out += ["", "## Restore with the page cache dropped (both flows)", "",
            f"The ceiling's disk read rate: {r['disk_read'] / 1e9:.2f} GB/s, from {read_probe(doc)}.", "",
            "| GiB data | baseline s | gpucr s | gpucr / baseline | ceiling s | gpucr / ceiling | gpucr steps | "
            "baseline steps | data after restore (b / g) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in doc.get("runs", []):
        b, g = row.get("baseline_restore", {}), row.get("gpucr_restore", {})
        _, rc = ceilings(doc, row)
        steps = _steps(g)
        bsteps = (f"criu restore {_f(b.get('criu_restore_s'))}, CUDA restore "
                  f"{_f(b.get('cuda_resume', {}).get('restore'))}") if b else "-"
        out.append(f"| {row['gib']:g} | {_f(b.get('total_s'))} | {_f(g.get('wall_s'))} | "
                   f"{_x(g.get('wall_s'), b.get('total_s'))} | {_f(rc)} | {_x(g.get('wall_s'), rc)} | {steps} | "
                   f"{bsteps} | {_ok(row, 'baseline_restore')} / {_ok(row, 'gpucr_restore')} |")
    out += ["", "## Leave-running: the workload's downtime", "",
            "Baseline downtime = CUDA lock + checkpoint + `criu dump --leave-running` + CUDA restore + unlock (its "
            "images were not fsynced afterwards); gpucr's = its summary's `downtime_s` (CUDA lock until the workload runs again); total = until the "
            "checkpoint is durable (gpucr: its wall time, sealed).", "",
            "| GiB data | baseline downtime s | gpucr downtime s | gpucr / baseline | baseline total s | gpucr total s | "
            "gpucr dumped to | gpucr steps | data after (b / g) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in doc.get("runs", []):
        b, g = row.get("baseline_lr", {}), row.get("gpucr_lr", {})
        steps = _steps(g)
        out.append(f"| {row['gib']:g} | {_f(b.get('downtime_s'))} | {_f(g.get('downtime_s'))} | "
                   f"{_x(g.get('downtime_s'), b.get('downtime_s'))} | {_f(b.get('total_s'))} | {_f(g.get('wall_s'))} | "
                   f"{g.get('dump_to', '-')} | {steps} | {_ok(row, 'baseline_lr')} / {_ok(row, 'gpucr_lr')} |")
    if doc.get("parallel"):
        out += ["", "## Two processes: one after the other vs both at once (gpucr, leave-running, durable)", "",
                "| processes | one after the other s | both at once s | at once / one after the other | downtimes at "
                "once s | data after |", "|---|---|---|---|---|---|"]
        for p in doc["parallel"]:
            seq = sequential_s(p)
            out.append(f"| 2 x {p['gib']:g} GiB | {_f(seq)} | {_f(p.get('parallel_s'))} | "
                       f"{_x(p.get('parallel_s'), seq)} | "
                       f"{', '.join(_f(s.get('downtime_s')) for s in p.get('parallel', []))} | "
                       f"{', '.join('identical' if c['identical'] else 'DIFFERENT' for c in p.get('checks', []))} |")
    for err in doc.get("errors", []):
        out += ["", f"**FAILED** {err['what']}: `{err['error'][-600:]}`"]
    if doc.get("notes"):
        out += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(out) + "\n"


def plot(doc: dict[str, Any], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in doc.get("runs", []) if "gpucr_ckpt" in r and "baseline_ckpt" in r]
    xs = [r["gib"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, title, b_of, g_of, ceil in (
            (axes[0], "checkpoint to durable", lambda r: r["baseline_ckpt"]["total_s"],
             lambda r: r["gpucr_ckpt"]["wall_s"], lambda r: ceilings(doc, r)[0]),
            (axes[1], "restore, page cache dropped", lambda r: r["baseline_restore"]["total_s"],
             lambda r: r["gpucr_restore"]["wall_s"], lambda r: ceilings(doc, r)[1]),
            (axes[2], "leave-running downtime", lambda r: r["baseline_lr"]["downtime_s"],
             lambda r: r["gpucr_lr"]["downtime_s"], None)):
        ax.plot(xs, [b_of(r) for r in runs], "o-", label="baseline (driver calls + criu CLI)")
        ax.plot(xs, [g_of(r) for r in runs], "s-", label="gpucr")
        if ceil is not None:
            ax.plot(xs, [ceil(r) for r in runs], "k^--", label="ceiling (driver best + disk rate)")
        ax.set_title(title)
        ax.set_xlabel("GiB of GPU data")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, max(xs, default=1) * 1.1)
        ax.legend(fontsize=8)
    e = doc["env"]
    fig.suptitle(f"gpucr on {e.get('gpus', ['?'])[0].split(',')[0]} ({e.get('date')}, THP {e.get('thp')})")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> int:
    src = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.parent
    doc = json.loads(src.read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_cr.md").write_text(markdown(doc))
    plot(doc, out / "gpu_cr.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
