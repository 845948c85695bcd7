"""Metrics: the spool's logic (unit), and the plugin daemon's endpoint scraped before and after real checkpoints and
restores by the CLI (real CRIU, the fake CUDA driver): counters, the step histograms and the byte counter move."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nri_plugin.handlers.metrics import Metrics, parse_address, report, step_label
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import CRIU, REPO, wait_for


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9477") == ("127.0.0.1", 9477)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":9477") == ("0.0.0.0", 9477)
    for bad in ("9477", "host:", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)


def test_spool_folds_in_once(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    m = Metrics(tmp_path)
    report(tmp_path, "checkpoint", "front", True, {"cuda-lock": 0.2, "criu": 1.5, "sync": 0.1}, 4096, 1024)
    report(tmp_path, "restore", "cli", False, {})
    (tmp_path / "metrics" / "junk.json").write_text("{")
    first = samples(generate_latest(m.registry).decode())
    assert value(first, "gpucr_checkpoints_total", result="ok", path="front") == 1
    assert value(first, "gpucr_restores_total", result="error", path="cli") == 1
    assert value(first, "gpucr_step_duration_seconds_count", operation="checkpoint", step="lock") == 1
    assert value(first, "gpucr_step_duration_seconds_sum", operation="checkpoint", step="criu") == 1.5
    assert value(first, "gpucr_step_duration_seconds_count", operation="checkpoint", step="sync") == 1
    assert value(first, "gpucr_checkpoint_bytes_total", kind="images") == 4096
    assert list((tmp_path / "metrics").iterdir()) == []  # folded in (and the unreadable one dropped)
    again = samples(generate_latest(m.registry).decode())
    assert value(again, "gpucr_checkpoints_total", result="ok", path="front") == 1
    assert step_label("cuda-restore") == "cuda_restore" and step_label("disk-space") == "disk_space"


def test_report_never_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    report(tmp_path / "file", "checkpoint", "cli", True)  # the spool cannot be made: silently not reported


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``gpucr plugin`` serving metrics (its NRI socket absent: the endpoint does not depend on containerd)."""
    port = _free_port()
    cfg = tmp_path / "gpucr.toml"
    cfg.write_text(f'state_dir = "{tmp_path}/state"\ncheckpoint_root = "{tmp_path}"\ncriu_config_dir = '
                   f'"{tmp_path}/criu"\nhook_path = ""\nmetrics_address = "127.0.0.1:{port}"\n')
    log = (tmp_path / "plugin.log").open("w")
    p = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "plugin", "--socket", str(tmp_path / "nri.sock"),
                          "--config", str(cfg)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return True
        except OSError:
            assert p.poll() is None, (tmp_path / "plugin.log").read_text()
            return False

    try:
        wait_for(up, timeout=20, what=f"the metrics endpoint {url}")
        yield url, cfg
    finally:
        p.terminate()
        p.wait(timeout=20)
        log.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(urllib.request.urlopen(url, timeout=5).read().decode())


@pytest.mark.criu
def test_scrape_after_cli_checkpoint_and_restore(daemon: tuple[str, Path], fake_cuda: FakeCuda,
                                                 tmp_path: Path) -> None:
    if os.geteuid() != 0 or not CRIU.exists():
        pytest.fail(f"needs root and {CRIU} (make deps)", pytrace=False)
    url, cfg = daemon
    env = {**os.environ, "GPUCR_CRIU": str(CRIU), "GPUCR_CONFIG": str(cfg)}

    def gpucr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)

    before = scrape(url)
    assert value(before, "gpucr_checkpoints_total", result="ok", path="cli") == 0
    assert value(before, "gpucr_managed_containers") == 0
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        w.advancing()
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout.strip().splitlines()[-1])
        w.proc.wait(10)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in w.pids), what="dumped tree to be gone")
        r = gpucr("restore", str(ck), "--json")
        assert r.returncode == 0, r.stderr
        w.advancing()
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck))  # exists, no --force: refused
        assert r.returncode == 1
    finally:
        w.kill()
    (tmp_path / "state/containers").mkdir(parents=True, exist_ok=True)
    (tmp_path / "state/containers/abc.json").write_text("{}")
    after = scrape(url)
    assert value(after, "gpucr_checkpoints_total", result="ok", path="cli") == 1
    assert value(after, "gpucr_checkpoints_total", result="error", path="cli") == 1
    assert value(after, "gpucr_restores_total", result="ok", path="cli") == 1
    for step in ("lock", "cuda_checkpoint", "criu"):
        assert value(after, "gpucr_step_duration_seconds_count", operation="checkpoint", step=step) == 1, step
    assert value(after, "gpucr_step_duration_seconds_sum", operation="checkpoint", step="criu") == \
        pytest.approx(s["timings_s"]["criu-dump"], abs=1e-3)
    for step in ("criu", "cuda_restore"):
        assert value(after, "gpucr_step_duration_seconds_count", operation="restore", step=step) == 1, step
    assert value(after, "gpucr_checkpoint_bytes_total", kind="gpu") == 2 << 30
    assert value(after, "gpucr_checkpoint_bytes_total", kind="images") == s["image_bytes"] > 0
    assert value(after, "gpucr_managed_containers") == 1
