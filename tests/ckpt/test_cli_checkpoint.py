"""``gpucr checkpoint`` / ``gpucr restore`` end to end: real CRIU (through gpucr's RPC client), real processes, and the
fake CUDA driver (built with gcc, found through GPUCR_LIBCUDA) for the CUDA steps, including a cgroup frozen before
the checkpoint. Bad input gets one clear error line and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import cgroups
from tests.ckpt._workload import Workload
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import wait_for

pytestmark = pytest.mark.criu


def gpucr(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(Path(sys.executable).parent / "gpucr"), *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"gpucr {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def summary(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture
def criu_env(criu_binary: str) -> dict[str, str]:
    return {"GPUCR_CRIU": criu_binary}


def test_pid_multiprocess_multithreaded_without_cuda(criu_env: dict[str, str], workload: Workload,
                                                     tmp_path: Path) -> None:
    """A non-CUDA tree: works without any CUDA step (no libcuda here at all), and the counters continue."""
    ck = tmp_path / "ck"
    workload.advancing()
    s = summary(gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--json",
                      env={**criu_env, "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1"}))
    assert s["cuda_processes"] == [] and s["image_bytes"] > 0 and "criu-dump" in s["timings_s"]
    at_dump = workload.counters()
    workload.wait_gone()
    assert all(oct(p.stat().st_mode & 0o777) == ("0o700" if p.is_dir() else "0o600") for p in [ck, *ck.rglob("*")])
    r = summary(gpucr("restore", str(ck), "--json", env=criu_env))
    assert r["pid"] == workload.root
    after = workload.advancing()
    # restored memory: every counter continues from its dumped value, not from 1
    assert all(at_dump[n] <= after[n] <= at_dump[n] + 200 for n in at_dump), (at_dump, after)


def test_fake_cuda_tree_kill_and_restore(criu_env: dict[str, str], fake_cuda: FakeCuda, tmp_path: Path) -> None:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        ck = tmp_path / "ck"
        w.advancing()
        s = summary(gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), "--json", env=criu_env))
        assert sorted(p["pid"] for p in s["cuda_processes"]) == sorted(w.pids)
        assert s["gpu_bytes"] == 2 << 30
        assert {"cuda-lock", "cuda-checkpoint", "criu-dump"} <= set(s["timings_s"])
        at_dump = w.counters()
        w.proc.wait(10)
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in w.pids), what="dumped tree to be gone")
        meta = json.loads((ck / "gpucr.json").read_text())
        assert meta["cuda"]["gpus"]["GPU-00000000-0000-4000-8000-000000000000"] == "Fake H200"
        r = summary(gpucr("restore", str(ck), "--json", env=criu_env))
        assert sorted(p["pid"] for p in r["cuda_processes"]) == sorted(w.pids)
        assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
        after = w.advancing()
        assert all(at_dump[n] <= after[n] <= at_dump[n] + 100 for n in at_dump), (at_dump, after)
    finally:
        w.kill()


@pytest.fixture
def freezer_cgroup() -> Iterator[cgroups.Freezer]:
    """A fresh cgroup on the freezer hierarchy the product uses here (v1 on a hybrid host, else v2), removed
    afterwards."""
    with cgroups.fresh("cuda") as f:
        yield f


@pytest.mark.parametrize("leave_running", [True, False], ids=["leave-running", "kill"])
def test_fake_cuda_in_a_cgroup_frozen_beforehand(criu_env: dict[str, str], fake_cuda: FakeCuda, tmp_path: Path,
                                                 freezer_cgroup: cgroups.Freezer, leave_running: bool) -> None:
    """The GRIT case: a caller paused the workload. gpucr thaws for CUDA, re-freezes for CRIU, and leaves the cgroup
    FROZEN as it found it; the fake's state ends RUNNING after restore."""
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        for p in w.pids:
            (freezer_cgroup.path / "cgroup.procs").write_text(str(p))
        w.advancing()
        freezer_cgroup.freeze()
        ck = tmp_path / "ck"
        args = ["checkpoint", "--pid", str(w.root), "--to", str(ck), "--json"]
        s = summary(gpucr(*args, *(["--leave-running"] if leave_running else []), env=criu_env))
        assert s["frozen_before"] is True and len(s["cuda_processes"]) == 2
        assert cgroups.state(freezer_cgroup) == "FROZEN"
        at_dump = w.counters()
        if leave_running:
            assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
            assert w.counters() == at_dump  # still frozen: nothing moves
            freezer_cgroup.thaw()
            w.advancing()
            w.kill()
        w.proc.wait(10)  # our child: reap it so its pid is free for the restore
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in w.pids), what="tree gone")
        r = summary(gpucr("restore", str(ck), "--json", env=criu_env))
        assert len(r["cuda_processes"]) == 2
        assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
        if not leave_running:
            # restored into the cgroup the caller still keeps paused: gpucr thawed it for CRIU and CUDA, then put it
            # back to FROZEN; the tree comes back paused, as it was checkpointed
            assert r["timings_s"].get("refreeze") is not None
            assert cgroups.state(freezer_cgroup) == "FROZEN"
            assert freezer_cgroup.pids() == sorted(w.pids)
            freezer_cgroup.thaw()
        w.advancing()
    finally:
        w.kill()


def test_cuda_failure_rolls_back_through_the_cli(criu_env: dict[str, str], fake_cuda: FakeCuda,
                                                 tmp_path: Path) -> None:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        fake_cuda.fail("checkpoint", 999, once=True)
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(tmp_path / "ck"), env=criu_env, check=False)
        assert r.returncode == 1
        assert "cuda-checkpoint failed for pid" in r.stderr and "CUDA_ERROR_UNKNOWN" in r.stderr
        assert "rolled back" in r.stderr
        assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
        w.advancing()
    finally:
        w.kill()


def test_bad_input(criu_env: dict[str, str], workload: Workload, tmp_path: Path) -> None:
    r = gpucr("checkpoint", "--pid", "999999999", "--to", str(tmp_path / "a"), env=criu_env, check=False)
    assert r.returncode == 1 and "pid 999999999 does not exist" in r.stderr
    ck = tmp_path / "ck"
    gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--leave-running", env=criu_env)
    r = gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--leave-running", env=criu_env,
              check=False)
    assert r.returncode == 1 and "already holds a checkpoint: choose another dir, or pass --force" in r.stderr
    gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--leave-running", "--force", env=criu_env)
    r = gpucr("checkpoint", "--pid", str(workload.root), "--to", str(tmp_path / "out"), "--root",
              str(tmp_path / "root"), env=criu_env, check=False)
    assert r.returncode == 1 and "outside the configured checkpoint root" in r.stderr
    workload.advancing()
    # a truncated image is caught from the metadata before CRIU runs
    img = max((ck / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(img, "r+b") as f:
        f.truncate(img.stat().st_size // 2)
    r = gpucr("restore", str(ck), env=criu_env, check=False)
    assert r.returncode == 1 and f"is corrupt: images/{img.name} has" in r.stderr
    r = gpucr("restore", "--quick-verify", str(ck), env=criu_env, check=False)
    assert r.returncode == 1 and f"is corrupt: images/{img.name} has" in r.stderr
    assert not (ck / "images" / "restore.log").exists()
    r = gpucr("restore", "--gpu-map", "nonsense", str(ck), env=criu_env, check=False)
    assert r.returncode == 1 and "bad --gpu-map entry 'nonsense'" in r.stderr
