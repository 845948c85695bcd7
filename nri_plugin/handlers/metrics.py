"""Prometheus metrics of gpucr, served by the plugin daemon (``metrics_address`` in the node config).

Checkpoints and restores happen in short-lived processes: the CRIU front (one per ``criu`` runc runs) and the
``gpucr`` CLI. They **report to the daemon through a spool directory**, ``STATE_DIR/metrics/`` (root-only): each
finished operation drops one small JSON event file there (:func:`report`, atomic rename, never blocks, needs no
daemon), and the daemon folds the files into its counters and histograms at each scrape, then deletes them. Why not a
socket to the daemon: the front runs inside runc's checkpoint with a deadline and must not wait on, or fail because
of, a daemon that is restarting. Why not a node-exporter textfile: many writers would have to merge counters in one
file under a lock, and histograms of many operations do not merge by rewriting a file; a spool of events needs
neither, and the counters stay monotonic in the one process Prometheus scrapes. Events written while the daemon is
down are counted at its next scrape.

Metrics: ``gpucr_checkpoints_total`` and ``gpucr_restores_total`` {result=ok|error, path=front|cli|periodic} (periodic: the
daemon's own periodic checkpoints, :mod:`.periodic`);
``gpucr_step_duration_seconds`` {operation, step} with step lock, cuda_checkpoint, criu, sync, cuda_restore (and
gpucr's other steps); ``gpucr_checkpoint_bytes_total`` {kind=images|gpu}; ``gpucr_managed_containers`` (records in
``STATE_DIR/containers``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SPOOL", "Metrics", "parse_address", "report", "step_label"]

log = logging.getLogger("gpucr.metrics")

SPOOL = "metrics"
#: gpucr's step names -> the metric's step label (the rest keep their own name, ``-`` as ``_``)
_STEPS = {"cuda-lock": "lock", "cuda-checkpoint": "cuda_checkpoint", "criu-dump": "criu", "criu-restore": "criu",
          "criu": "criu", "sync": "sync", "cuda-restore": "cuda_restore"}
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: spooled events kept at most (a daemon that never runs must not let the spool fill the disk)
MAX_SPOOL = 10_000


def step_label(name: str) -> str:
    return _STEPS.get(name, name.replace("-", "_"))


def report(state_dir: Path | str, operation: str, path: str, ok: bool, timings_s: Mapping[str, float] | None = None,
           image_bytes: int = 0, gpu_bytes: int = 0) -> None:
    """Spool one finished checkpoint or restore for the daemon. Never raises: metrics must not fail a checkpoint."""
    spool = Path(state_dir) / SPOOL
    event = {"operation": operation, "path": path, "result": "ok" if ok else "error", "time": time.time(),
             "timings_s": dict(timings_s or {}), "image_bytes": int(image_bytes), "gpu_bytes": int(gpu_bytes)}
    try:
        spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        if len(os.listdir(spool)) >= MAX_SPOOL:
            return
        fd, tmp = tempfile.mkstemp(dir=spool, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(event, f)
        os.replace(tmp, spool / f"{time.time_ns()}-{os.getpid()}.json")
    except OSError as exc:
        log.debug("metrics event not spooled in %s: %s", spool, exc)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port); ValueError with the expected form."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics_address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9477")
    return host.strip("[]") or "0.0.0.0", int(port)


class Metrics:
    """The daemon's registry: counters and histograms fed from the spool at each scrape."""

    def __init__(self, state_dir: Path | str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.state_dir = Path(state_dir)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Ingest(self))  # first: the spool is folded in before the others are collected
        self.checkpoints = Counter("gpucr_checkpoints", "checkpoints gpucr took part in", ["result", "path"],
                                   registry=self.registry)
        self.restores = Counter("gpucr_restores", "restores gpucr took part in", ["result", "path"],
                                registry=self.registry)
        self.steps = Histogram("gpucr_step_duration_seconds", "duration of each step of a checkpoint or restore",
                               ["operation", "step"], buckets=_BUCKETS, registry=self.registry)
        self.bytes = Counter("gpucr_checkpoint_bytes", "bytes written by checkpoints (images: the checkpoint's "
                             "files; gpu: the GPU memory among them)", ["kind"], registry=self.registry)
        managed = Gauge("gpucr_managed_containers", "containers gpucr manages (records in its state dir)",
                        registry=self.registry)
        managed.set_function(self._managed)
        for result in ("ok", "error"):  # the series exist (at 0) before the first event
            for path in ("front", "cli", "periodic"):
                self.checkpoints.labels(result, path)
                self.restores.labels(result, path)

    def _managed(self) -> float:
        try:
            return float(sum(1 for p in (self.state_dir / "containers").iterdir() if p.suffix == ".json"
                             and not p.name.startswith(".")))
        except OSError:
            return 0.0

    def ingest(self) -> int:
        """Fold every spooled event into the metrics and delete it; the number folded."""
        spool = self.state_dir / SPOOL
        try:
            names = sorted(n for n in os.listdir(spool) if n.endswith(".json") and not n.startswith("."))
        except OSError:
            return 0
        done = 0
        for name in names:
            p = spool / name
            try:
                ev = json.loads(p.read_text())
                p.unlink()
            except (OSError, ValueError) as exc:
                log.warning("metrics event %s unreadable (%s): removed", p, exc)
                p.unlink(missing_ok=True)
                continue
            self.add(ev)
            done += 1
        return done

    def add(self, ev: Mapping[str, Any]) -> None:
        op, path, result = str(ev.get("operation")), str(ev.get("path")), str(ev.get("result"))
        (self.checkpoints if op == "checkpoint" else self.restores).labels(result, path).inc()
        for name, secs in (ev.get("timings_s") or {}).items():
            if isinstance(secs, (int, float)) and secs >= 0:
                self.steps.labels(op, step_label(name)).observe(secs)
        if op == "checkpoint" and result == "ok":
            self.bytes.labels("images").inc(max(0, int(ev.get("image_bytes") or 0)))
            self.bytes.labels("gpu").inc(max(0, int(ev.get("gpu_bytes") or 0)))

    def serve(self, address: str) -> Any:
        """Start the HTTP endpoint (``/metrics``) in a daemon thread; returns the server."""
        from prometheus_client import start_http_server

        host, port = parse_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, port)
        return server


class _Ingest:
    """A collector that exports nothing: collecting it folds the spool in."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        self.metrics.ingest()
        return []
