"""The image copy's rate against the disk's: gpucr's ``ImageCopier`` (nri_plugin/ckpt/layout.py) copying a dump out of
a huge tmpfs to a checkpoint dir, beside the raw O_DIRECT disk probe of ``bench/gpu_cr.py --ceilings``, in one run.

    python3 bench/copy_probe.py OUT_DIR [--gib 8] [--dir /var/tmp] [--repeat 3] [--follow] [--buffered]
                                [--threads N] [--chunk-mib M] [--no-prealloc | --ab] [--no-disk]

No GPU needed; root (the tmpfs is mounted the memory stage's way, :mod:`nri_plugin.ckpt.memstage`: ``huge=always``
where the kernel has it, detached). The dump: ``pages-1.img`` of ``--gib`` GiB of ``os.urandom`` data plus 12 KiB
(the last piece short, as CRIU's are) and two small images. Each repeat copies it into a new checkpoint dir on
``--dir`` (``ImageCopier.finish``: hashed on the way, every file fdatasynced) and checks the manifest digest against a
hash of the source; ``--follow`` also times the copy following a page image that grows at memory speed (the dump
written while it is copied, as CRIU's is: copy rate = bytes / time from the first byte written to durable).
``--threads``/``--chunk-mib`` override the copier's ``IO_THREADS``/``_IO_CHUNK`` and ``--no-prealloc`` turns its
preallocation off, for tuning runs; ``--ab`` copies once more per repeat without preallocation, right after. Writes
``OUT_DIR/copy_probe.json`` and ``OUT_DIR/copy_probe.md``; medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))

from _diskprobe import GIB, disk_rates, drop_caches  # noqa: E402

from nri_plugin.ckpt import layout, memstage  # noqa: E402
from nri_plugin.ckpt.layout import CheckpointDir  # noqa: E402

TAIL = 12 << 10


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def open_src(base: Path, nbytes: int) -> tuple[Path, memstage.MemStage | None, str]:
    """A dir in a tmpfs mounted the memory stage's way; /dev/shm when that cannot be mounted (says why)."""
    stage, why = memstage.open_stage(base, nbytes, mem_available())
    if stage is not None:
        return stage.images, stage, "huge tmpfs (memstage)" if stage.huge else "tmpfs (memstage; no huge= option)"
    d = Path(tempfile.mkdtemp(prefix="copy-probe-", dir="/dev/shm"))
    return d, None, f"/dev/shm ({why})"


def fill(path: Path, nbytes: int) -> float:
    """Write ``nbytes`` of os.urandom data to ``path`` (64 MiB blocks, on every CPU); returns seconds."""
    t = time.monotonic()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        def block(off: int) -> None:
            data = os.urandom(min(64 << 20, nbytes - off))
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], off + done)
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(block, range(0, nbytes, 64 << 20)))
    finally:
        os.close(fd)
    return time.monotonic() - t


def copy_once(src: Path, dest: Path, want: str, size: int) -> float:
    """GB/s of one ImageCopier.finish() of ``src`` into a new checkpoint dir ``dest`` (removed after)."""
    os.sync()
    cp = CheckpointDir.create(dest)
    try:
        t = time.monotonic()
        known = layout.ImageCopier(cp, src).finish()
        dt = time.monotonic() - t
        got = known["images/pages-1.img"]
        if got.size != size or got.sha256 != want or os.path.getsize(cp.images_dir / "pages-1.img") != size:
            raise RuntimeError(f"copy differs: {got} (size on disk {os.path.getsize(cp.images_dir / 'pages-1.img')}),"
                               f" want {size} {want}")
        return dt
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def follow_once(master: Path, src: Path, dest: Path, want: str, size: int) -> float:
    """Seconds from the first byte of ``pages-1.img`` written into ``src`` (copied from ``master`` in 64 MiB
    appends, at memory speed) to the copier's durable end, the copier following it."""
    os.sync()
    cp = CheckpointDir.create(dest)
    target = src / "pages-1.img"
    target.unlink(missing_ok=True)
    try:
        t = time.monotonic()
        copier = layout.ImageCopier(cp, src).follow()

        def dump() -> None:
            with open(master, "rb") as fi, open(target, "wb") as fo:
                while chunk := fi.read(64 << 20):
                    fo.write(chunk)
        w = threading.Thread(target=dump)
        w.start()
        w.join()
        known = copier.finish()
        dt = time.monotonic() - t
        if known["images/pages-1.img"] != layout.FileEntry(size, want):
            raise RuntimeError("followed copy differs from the source")
        return dt
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def markdown(doc: dict[str, Any]) -> str:
    e, d, c = doc["env"], doc["disk"], doc["copy"]
    out = ["# ImageCopier against the disk (bench/copy_probe.py)", "",
           f"- {e['date']}, {e['host']} ({e['cpus']} CPUs, kernel {e['kernel']}); source: {e['source']}; "
           f"destination: `{e['dir']}` ({e['fs']})",
           f"- copier: {c['threads']} threads, {c['chunk_mib']} MiB chunks, {c['piece_mib']} MiB pieces, "
           f"{'preallocated' if c['preallocate'] else 'not preallocated'}; "
           f"{doc['gib']:g} GiB + {TAIL >> 10} KiB of random data, {doc['repeat']} repeats (median)", "",
           "| what | GB/s (median) | each |", "|---|---|---|"]
    for k, v in d.items():
        if k.endswith("_GBps"):
            out.append(f"| disk probe {k[5:-5].replace('_', ' ')} ({doc['gib']:g} GiB, 4 threads, 16 MiB) | "
                       f"{v['median']} | {v['each']} |")
    out.append(f"| ImageCopier.finish (tmpfs -> disk, hashed, fdatasync) | {c['GBps']['median']} | "
               f"{c['GBps']['each']} |")
    if "not_preallocated_GBps" in c:
        out.append(f"| ImageCopier.finish without preallocation (A/B, right after) | "
                   f"{c['not_preallocated_GBps']['median']} | {c['not_preallocated_GBps']['each']} |")
    if "follow_GBps" in c:
        out.append(f"| ImageCopier following a growing page image | {c['follow_GBps']['median']} | "
                   f"{c['follow_GBps']['each']} |")
    w = d.get("disk_write_direct_GBps", {}).get("median")
    if w:
        out += ["", f"Copy / disk O_DIRECT write: {c['GBps']['median'] / w:.2f}"]
    return "\n".join(out) + "\n"


def _stats(xs: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(xs), 3), "each": [round(x, 3) for x in xs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--gib", type=float, default=8, help="GiB of the page image and of the disk probe file")
    ap.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="the filesystem written to (a temp dir in it)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--follow", action="store_true", help="also time the copy following a growing page image")
    ap.add_argument("--buffered", action="store_true", help="the disk probe's buffered pair too")
    ap.add_argument("--no-disk", action="store_true", help="skip the disk probe (copier tuning runs)")
    ap.add_argument("--threads", type=int, default=0, help="override the copier's IO_THREADS")
    ap.add_argument("--chunk-mib", type=int, default=0, help="override the copier's _IO_CHUNK")
    ap.add_argument("--no-prealloc", action="store_true", help="the copier without its preallocation")
    ap.add_argument("--ab", action="store_true", help="each repeat also copies without preallocation (A/B)")
    a = ap.parse_args()
    if a.threads:
        layout.IO_THREADS = a.threads
    if a.chunk_mib:
        layout._IO_CHUNK = a.chunk_mib << 20
    if a.no_prealloc and a.ab:
        ap.error("--ab already copies without preallocation")
    if a.no_prealloc:
        layout.ImageCopier.PREALLOCATE = False
    a.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="copy-probe-", dir=a.dir))
    size = int(a.gib * GIB) + TAIL
    mounts = [ln.split() for ln in Path("/proc/self/mounts").read_text().splitlines()]
    real = a.dir.resolve()
    fs = max(((len(m[1]), m[2]) for m in mounts if real.is_relative_to(m[1])), default=(0, "?"))[1]
    src, stage, how = open_src(work / "mem", size * (2 if a.follow else 1))
    doc: dict[str, Any] = {
        "gib": a.gib, "repeat": a.repeat,
        "env": {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(), "cpus": os.cpu_count(),
                "kernel": platform.release(), "source": how, "dir": str(a.dir), "fs": fs},
        "copy": {"threads": layout.IO_THREADS, "chunk_mib": layout._IO_CHUNK >> 20,
                 "piece_mib": layout.PIECE_BYTES >> 20, "preallocate": layout.ImageCopier.PREALLOCATE},
        "disk": {}}
    try:
        doc["fill_s"] = round(fill(src / "pages-1.img", size), 2)
        (src / "pagemap-1.img").write_bytes(os.urandom(4096))
        (src / "core-1.img").write_bytes(os.urandom(777))
        want = layout._sha256(src / "pages-1.img")
        master = None
        if a.follow:  # the page image to append from (outside the copier's dir)
            master = Path(f"/proc/self/fd/{stage.fd}/master") if stage else src.parent / f"{src.name}-master"
            os.rename(src / "pages-1.img", master)
            (src / "pages-1.img").touch()
        rates: dict[str, list[float]] = {}
        copies: list[float] = []
        follows: list[float] = []
        plain: list[float] = []
        for i in range(a.repeat):
            if not a.no_disk:
                for k, v in disk_rates(work, a.gib, buffered=a.buffered).items():
                    rates.setdefault(k, []).append(v)
            if master is None:
                copies.append(size / copy_once(src, work / f"ck{i}", want, size) / 1e9)
            else:
                follows.append(size / follow_once(master, src, work / f"cf{i}", want, size) / 1e9)
                copies.append(size / copy_once(src, work / f"ck{i}", want, size) / 1e9)
            if a.ab:  # the same copy without preallocation, right after
                layout.ImageCopier.PREALLOCATE = False
                plain.append(size / copy_once(src, work / f"cn{i}", want, size) / 1e9)
                layout.ImageCopier.PREALLOCATE = True
            drop_caches()
            print(f"repeat {i + 1}: copy {copies[-1]:.3f} GB/s" + (f", not preallocated {plain[-1]:.3f}" if plain
                                                                    else "")
                  + (f", follow {follows[-1]:.3f} GB/s" if follows
                                                                    else ""), file=sys.stderr, flush=True)
        doc["disk"] = {k: _stats(v) for k, v in rates.items()}
        doc["copy"]["GBps"] = _stats(copies)
        if follows:
            doc["copy"]["follow_GBps"] = _stats(follows)
        if plain:
            doc["copy"]["not_preallocated_GBps"] = _stats(plain)
    finally:
        if stage is not None:
            stage.close()
        else:
            shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    (a.out / "copy_probe.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = markdown(doc)
    (a.out / "copy_probe.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
