"""``gpucr checkpoint`` / ``gpucr restore`` end to end: real CRIU (through gpucr's RPC client), real processes, and the
fake CUDA driver (built with gcc, found through GPUCR_LIBCUDA) for the CUDA steps, including a cgroup frozen before
the checkpoint. Bad input gets one clear error line and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import cgroups
from tests.ckpt._workload import Workload
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import node_config, wait_for

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
def criu_env(criu_binary: str, tmp_path: Path) -> dict[str, str]:
    return {"GPUCR_CRIU": criu_binary, **node_config(tmp_path)}


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
    root = tmp_path / "root"
    root.mkdir()
    r = gpucr("checkpoint", "--pid", str(workload.root), "--to", str(tmp_path / "out"), check=False,
              env={**criu_env, **node_config(root)})
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


def one_error_line(r: subprocess.CompletedProcess[str], command: str = "checkpoint") -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith(f"gpucr {command}: error: ") and "Traceback" not in r.stderr
    return lines[0]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """tmpfs mounts of a given size (mode 0700) under tmp_path, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        d = tmp_path / f"small-{size}"
        d.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(d)], check=True)
        mounted.append(d)
        return d

    try:
        yield mount
    finally:
        for d in mounted:
            subprocess.run(["umount", str(d)], check=False)


def test_not_enough_disk_space_is_refused_before_criu(criu_env: dict[str, str], fake_cuda: FakeCuda,
                                                      tmp_path: Path, small_fs: Callable[[str], Path]) -> None:
    """1 MiB cannot take the tree's memory: refused before anything is created or locked. 200 MiB takes the
    memory but not the 1 GiB of GPU data: refused after CUDA found it, rolled back, CRIU never ran, nothing left
    (not even the staged dir). Both times the workload keeps running, unlocked. A mount point itself is refused as
    --to (the checkpoint is renamed into place at the end)."""
    w = FakeWorkload(fake_cuda, tmp_path, nproc=1)
    try:
        tiny = small_fs("1M")
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(tiny / "ck"), env=criu_env, check=False)
        line = one_error_line(r)
        assert f"not enough disk space in {tiny} for the checkpoint of pid {w.root}" in line, line
        assert "free" in line and "host memory + margin" in line
        assert list(tiny.iterdir()) == []
        assert fake_cuda.state(w.root) == "RUNNING"
        w.advancing()
        mid = small_fs("200M")
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(mid / "ck"), env=criu_env, check=False)
        assert r.returncode == 1
        assert f"not enough disk space in {mid} for" in r.stderr and "1.00 GiB GPU data" in r.stderr, r.stderr
        assert "rolled back: 1 CUDA process(es) restored and unlocked" in r.stderr
        assert list(mid.iterdir()) == []  # CRIU never ran; the staged dir is gone
        assert fake_cuda.state(w.root) == "RUNNING"
        w.advancing()
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(mid), env=criu_env, check=False)
        assert f"checkpoint dir {mid} is a mount point" in one_error_line(r)
        assert list(mid.iterdir()) == [] and fake_cuda.state(w.root) == "RUNNING"
    finally:
        w.kill()


def test_force_on_a_non_checkpoint_dir_with_a_link_out(criu_env: dict[str, str], workload: Workload,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "outside"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    (out / "keep.txt").write_text("precious\n")
    os.chmod(out / "keep.txt", 0o644)
    before = {str(p): (os.lstat(p).st_mode, os.lstat(p).st_uid, p.read_bytes() if p.is_file() else b"")
              for p in [out, *out.rglob("*")]}
    d = tmp_path / "ck"
    d.mkdir(mode=0o755)
    (d / "link").symlink_to(out)
    (d / "file").symlink_to(out / "keep.txt")
    r = gpucr("checkpoint", "--pid", str(workload.root), "--to", str(d), "--force", env=criu_env, check=False)
    assert "is not empty and holds no gpucr checkpoint" in one_error_line(r)
    after = {str(p): (os.lstat(p).st_mode, os.lstat(p).st_uid, p.read_bytes() if p.is_file() else b"")
             for p in [out, *out.rglob("*")]}
    assert after == before and sorted(x.name for x in d.iterdir()) == ["file", "link"]
    assert os.lstat(d).st_mode & 0o777 == 0o755
    workload.advancing()


def test_restore_dir_must_be_ours_and_private(criu_env: dict[str, str], workload: Workload, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), env={**criu_env,
                                                                         "GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1"})
    workload.wait_gone()
    os.chown(ck, 65534, 65534)
    r = gpucr("restore", str(ck), env=criu_env, check=False)
    assert f"checkpoint dir {ck} is owned by uid 65534" in one_error_line(r, "restore")
    os.chown(ck, 0, 0)
    os.chmod(ck, 0o777)
    r = gpucr("restore", str(ck), env=criu_env, check=False)
    assert f"checkpoint dir {ck} is group- or world-writable (mode 0777)" in one_error_line(r, "restore")
    assert not (ck / "images" / "restore.log").exists()  # CRIU never ran
    os.chmod(ck, 0o700)
    assert summary(gpucr("restore", str(ck), "--json", env=criu_env))["pid"] == workload.root
    workload.advancing()


def test_libcuda_from_the_node_config(criu_env: dict[str, str], fake_cuda: FakeCuda, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPUCR_LIBCUDA: the config's libcuda is the driver gpucr loads (the fake: it finds the CUDA process)."""
    w = FakeWorkload(fake_cuda, tmp_path, nproc=1)
    try:
        monkeypatch.delenv("GPUCR_LIBCUDA")
        env = {**criu_env, **node_config(tmp_path, libcuda=str(fake_cuda.lib), lock_timeout_ms=2500)}
        r = gpucr("checkpoint", "-v", "--pid", str(w.root), "--to", str(tmp_path / "ck"), "--leave-running", "--json",
                  env=env)
        assert [p["pid"] for p in summary(r)["cuda_processes"]] == [w.root]
        assert "lock timeout 2500 ms" in r.stderr
        assert fake_cuda.state(w.root) == "RUNNING"
        w.advancing()
    finally:
        w.kill()
