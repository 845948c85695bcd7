"""The disk's raw rate on a filesystem: O_DIRECT writes and cold reads in parallel threads, buffered ones with fsync;
the ceiling a checkpoint's image write is measured against (``bench/gpu_cr.py --ceilings``, ``bench/copy_probe.py``).

A file of ``gib`` GiB is written in 16 MiB chunks of random data (O_DIRECT: ``threads`` threads, each its share of
the offsets in turn; buffered: one thread, fsync included), the page cache dropped, and read back the same way; with
``parallel_read``, the buffered file is also read cold by that many threads, each one contiguous range (the way
gpucr's restore prefetch reads page images ahead of CRIU)."""

from __future__ import annotations

import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GIB = 1 << 30
CHUNK = 16 << 20
THREADS = 4


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _run(f: Path, n: int, flags: int, write: bool, threads: int, ranges: bool = False) -> float:
    """GB/s of writing (fsync included) or reading ``n`` bytes of ``f`` with ``flags`` in ``threads`` threads (each
    every ``threads``-th chunk, or with ``ranges`` one contiguous range)."""
    src = mmap.mmap(-1, CHUNK)
    src.write(os.urandom(CHUNK))
    offsets = list(range(0, n, CHUNK))
    fd = os.open(f, flags | (os.O_WRONLY | os.O_CREAT if write else os.O_RDONLY), 0o600)

    def one(part: list[int]) -> None:
        buf = mmap.mmap(-1, CHUNK)
        if write:
            buf.write(src[:])
        for off in part:
            (os.pwritev if write else os.preadv)(fd, [buf], off)
    try:
        t = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            per = -(-len(offsets) // threads)
            parts = ([offsets[i * per:(i + 1) * per] for i in range(threads)] if ranges
                     else [offsets[i::threads] for i in range(threads)])
            list(pool.map(one, parts))
        if write:
            os.fsync(fd)
        dt = time.monotonic() - t
    finally:
        os.close(fd)
    return round(n / dt / 1e9, 3)


def disk_rates(where: Path, gib: float, *, buffered: bool = True, threads: int = THREADS,
               parallel_read: int = 0) -> dict[str, float]:
    """``disk_{write,read}_{direct,buffered}_GBps`` of a ``gib`` GiB file in the dir ``where`` (removed after);
    the buffered pair only with ``buffered``; with it and ``parallel_read`` also ``disk_read_buffered_parallel_GBps``
    (``parallel_read`` threads, cold)."""
    f = where / "disk-probe"
    n = int(gib * GIB)
    out: dict[str, float] = {}
    try:
        out["disk_write_direct_GBps"] = _run(f, n, os.O_DIRECT, True, threads)
        drop_caches()
        out["disk_read_direct_GBps"] = _run(f, n, os.O_DIRECT, False, threads)
        f.unlink()
        if buffered:
            out["disk_write_buffered_GBps"] = _run(f, n, 0, True, 1)
            drop_caches()
            out["disk_read_buffered_GBps"] = _run(f, n, 0, False, 1)
            if parallel_read:
                drop_caches()
                out["disk_read_buffered_parallel_GBps"] = _run(f, n, 0, False, parallel_read, ranges=True)
    finally:
        f.unlink(missing_ok=True)
    return out
