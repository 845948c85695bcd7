#!/usr/bin/env python3
"""``gpucr export``/``import`` layer compression: none vs gzip vs zstd, on random data and on compressible data.

What is timed is the format's own work (``ckpt/oci_image.pack``: tar + compression; ``unpack``: digest check,
decompression, extraction, the full sha256 check against gpucr.json, fsync, rename), on a sealed checkpoint whose
``pages-1.img`` is either random bytes (what GPU memory full of trained weights looks like to a compressor) or
compressible (zero pages and repeated small-integer arrays, like a freshly allocated or sparse buffer). Moving the
blobs through containerd's content store costs the same per byte whatever the compression, so the layer size is what
a push, pull or copy pays for.

Usage (root): .venv/bin/python bench/migrate_image.py [--mib 64] [--runs 3] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_plugin.ckpt.layout import CheckpointDir, Metadata  # noqa: E402
from nri_plugin.ckpt.oci_image import check_config, check_manifest, pack, unpack  # noqa: E402


def _data(kind: str, size: int) -> bytes:
    if kind == "random":
        return os.urandom(size)
    page = 4096
    out = bytearray()
    i = 0
    while len(out) < size:  # 3 zero pages, then one of little-endian int32 counters
        out += bytes(page * 3) if i % 4 else b"".join(j.to_bytes(4, "little") for j in range(i, i + page // 4))
        i += 1
    return bytes(out[:size])


def _sealed(root: Path, kind: str, size: int) -> Path:
    d = root / kind
    (d / "images").mkdir(parents=True, mode=0o700)
    (d / "images" / "descriptors.json").write_text("[]")
    (d / "images" / "pages-1.img").write_bytes(_data(kind, size))
    CheckpointDir(d).finalize(Metadata())
    return d


def run(mib: int, runs: int) -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as t:
        root = Path(t) / "root"
        root.mkdir(mode=0o700)
        for kind in ("random", "compressible"):
            src = _sealed(root, kind, mib << 20)
            for comp in ("none", "gzip", "zstd"):
                packs, unpacks, size = [], [], 0
                for _ in range(runs):
                    spool = Path(t) / "spool"
                    spool.mkdir(mode=0o700)
                    t0 = time.perf_counter()
                    p = pack(src, root, spool, compress=comp)
                    packs.append(time.perf_counter() - t0)
                    size = p.layer_ref.size
                    cref, lref, _ = check_manifest(p.manifest, p.manifest_ref, "bench")
                    cfg = check_config(p.config, cref, "bench")
                    t0 = time.perf_counter()
                    unpack(p.layer, lref, cfg, root / "copy", root, "bench")
                    unpacks.append(time.perf_counter() - t0)
                    shutil.rmtree(root / "copy")
                    shutil.rmtree(spool)
                rows.append({"data": kind, "compress": comp, "mib": mib, "layer_mib": round(size / 2**20, 2),
                             "ratio": round(size / (mib << 20), 3), "pack_s": round(statistics.median(packs), 3),
                             "unpack_s": round(statistics.median(unpacks), 3)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    rows = run(a.mib, a.runs)
    zstd = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"# host: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, {zstd}, runs={a.runs} (median)")
    if a.markdown:
        print("| data | compression | checkpoint MiB | layer MiB | layer/data | pack s | unpack s |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['data']} | {r['compress']} | {r['mib']} | {r['layer_mib']} | {r['ratio']} | {r['pack_s']} | "
                  f"{r['unpack_s']} |")
    else:
        for r in rows:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
