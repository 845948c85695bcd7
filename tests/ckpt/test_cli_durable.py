"""Durable, atomic checkpoints and the faults of a dump, through ``gpucr checkpoint`` as a subprocess: real CRIU,
real processes, the fake CUDA driver.

* The images are fsynced at CRIU's ``post-dump`` and, without ``--leave-running``, the checkpoint is sealed there
  too (``gpucr.json`` written last, renamed into place, parent fsynced): every fsync and the rename happen while the
  workload still lives (CRIU kills it only after our answer). A gpucr SIGKILLed at that point leaves the workload
  running and no checkpoint that ``gpucr restore`` accepts.
* A full disk (a small tmpfs as the target), a criu that dies mid-dump, and a driver error at each step each leave
  the workload running and unlocked, no valid checkpoint, and one error naming the pid, the step and the fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ckpt._workload import Workload
from tests.ckpt.test_cli_checkpoint import gpucr, summary
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from nri_plugin.ckpt.engine import disk_need
from nri_plugin.host.proc import rss_bytes, tree_pids
from tests.testenv import REPO, node_config, wait_for

pytestmark = pytest.mark.criu

GPUCR = str(Path(sys.executable).parent / "gpucr")


@pytest.fixture(autouse=True)
def confined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every gpucr run here reads a node config whose checkpoint_root is this test's tmp dir."""
    monkeypatch.setenv("GPUCR_CONFIG", node_config(tmp_path)["GPUCR_CONFIG"])


@pytest.fixture(scope="session")
def fsync_gate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fakes/fsync_gate.c built with gcc (a missing gcc fails loudly)."""
    out = tmp_path_factory.mktemp("fsyncgate") / "fsync_gate.so"
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out),
                        str(REPO / "tests/fakes/fsync_gate.c"), "-ldl"], capture_output=True, text=True)
    assert r.returncode == 0, f"building fsync_gate.so failed:\n{r.stderr}"
    return out


def killer_criu(tmp: Path, real: str, stage: str) -> str:
    """A criu binary that SIGKILLs the real one at ``stage`` (tests/fakes/criu_killer.py)."""
    w = tmp / f"criu-killed-at-{stage}"
    w.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} {REPO}/tests/fakes/criu_killer.py {real} "
                 f"{stage} \"$@\"\n")
    w.chmod(0o700)
    return str(w)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """A tmpfs of a given size in bytes (mode 0700) under tmp_path, unmounted afterwards."""
    d = tmp_path / "small"

    def mount(size: int) -> Path:
        d.mkdir(mode=0o700)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "gpucr-test-full", str(d)],
                       check=True)
        return d

    try:
        yield mount
    finally:
        if d.is_mount():
            subprocess.run(["umount", "-l", str(d)], check=False)


def no_checkpoint(ck: Path, env: dict[str, str]) -> None:
    """Nothing under ``ck``'s name or a temporary sibling that ``gpucr restore`` accepts."""
    candidates = [ck, *ck.parent.glob(f".{ck.name}.gpucr-*")]
    for d in candidates:
        r = gpucr("restore", str(d), env=env, check=False)
        assert r.returncode == 1 and "error:" in r.stderr, (d, r.stderr)


def one_error(stderr: str, *parts: str) -> str:
    """The single error line (the rest of stderr is progress and log lines), containing every part."""
    errors = [ln for ln in stderr.splitlines() if "error:" in ln.lower() or "traceback" in ln.lower()
              or " ERROR " in ln or " WARNING " in ln]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("gpucr checkpoint: error: ") and all(p in errors[0] for p in parts), errors[0]
    return errors[0]


def rolled_back(r: subprocess.CompletedProcess[str], fake_cuda: FakeCuda, w: FakeWorkload, ck: Path, criu: str,
                *parts: str) -> None:
    """``gpucr checkpoint`` of ``w`` failed with one error line containing every part and rolled back: its CUDA
    processes RUNNING and advancing, no ``ck`` nor a temporary sibling, nothing there ``gpucr restore`` accepts."""
    assert r.returncode == 1
    one_error(r.stderr, *parts)
    assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
    w.advancing()
    assert not ck.exists() and not list(ck.parent.glob(f".{ck.name}.gpucr-*"))
    no_checkpoint(ck, {"GPUCR_CRIU": criu})


def test_durable_before_the_workload_goes(criu_binary: str, fsync_gate: Path, workload: Workload,
                                          tmp_path: Path) -> None:
    """Without --leave-running: images fsynced, gpucr.json written and fsynced, the dir renamed into place and the
    parent fsynced, each while the workload is still alive; only then does CRIU kill it."""
    ck, log = tmp_path / "ck", tmp_path / "fsync.log"
    s = summary(gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--json",
                      env={"GPUCR_CRIU": criu_binary, "LD_PRELOAD": str(fsync_gate), "FSYNC_GATE_LOG": str(log),
                           "FSYNC_GATE_WATCH": str(workload.root)}))
    assert s["timings_s"]["sync"] > 0 and s["timings_s"]["seal"] > 0
    workload.wait_gone()
    lines = [ln.split() for ln in log.read_text().splitlines()]
    staged = f"/.{ck.name}.gpucr-tmp-"
    first_after = next(i for i, ln in enumerate(lines) if ln[0] == "rename" and ln[2] == str(ck))
    before, after = lines[:first_after + 1], lines[first_after + 1:]
    # before the commit: every image and the dirs fsynced, gpucr.json last, all while the workload lives
    synced = {ln[1] for ln in before if ln[0] == "fsync"}
    images = {str(ck / "images" / p.name).replace(f"/{ck.name}/", staged.rstrip("-") + "-XX/") for p in []}
    assert all(ln[-1] == "alive=1" for ln in before), before
    assert any(staged in p and p.endswith("/images/inventory.img") for p in synced), synced
    assert any(staged in p and "/images/pages-" in p for p in synced), synced
    meta_sync = max(i for i, ln in enumerate(before) if ln[0] == "fsync" and ln[1].endswith("/.gpucr.json.tmp"))
    img_syncs = [i for i, ln in enumerate(before) if ln[0] == "fsync" and "/images/" in ln[1]]
    assert max(img_syncs) < meta_sync < first_after
    # after: the parent fsynced, still before the workload is gone
    assert after[0][:2] == ["fsync", str(ck.parent)] and after[0][-1] == "alive=1", after
    r = summary(gpucr("restore", str(ck), "--json", env={"GPUCR_CRIU": criu_binary}))
    assert r["pid"] == workload.root
    workload.advancing()


@pytest.mark.parametrize("leave_running", [False, True], ids=["kill", "leave-running"])
def test_sigkill_of_gpucr_at_post_dump(criu_binary: str, fsync_gate: Path, workload: Workload, tmp_path: Path,
                                       leave_running: bool) -> None:
    """gpucr dies while CRIU waits on its post-dump answer: CRIU's dump fails and it resumes the tasks (never kills
    them); the checkpoint exists only under its temporary name, which restore refuses. With leave-running the dump
    goes straight to disk here (``dump_via_memory = "never"``): through memory, gpucr's first fsync comes after the
    tasks already run again (the images are written while the workload runs), which is not this case."""
    if leave_running:
        node_config(tmp_path, dump_via_memory="never")  # the autouse fixture's GPUCR_CONFIG file, rewritten
    ck, gate = tmp_path / "ck", tmp_path / "blocked"
    env = {**os.environ, "GPUCR_CRIU": criu_binary, "LD_PRELOAD": str(fsync_gate), "FSYNC_GATE_BLOCK": str(gate)}
    p = subprocess.Popen([GPUCR, "checkpoint", "--pid", str(workload.root), "--to", str(ck),
                          *(["--leave-running"] if leave_running else [])], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_for(gate.exists, timeout=60, what="gpucr to reach its post-dump fsync")
        frozen = workload.counters()
        assert workload.counters() == frozen  # CRIU holds the tasks while it waits for the answer
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    after = workload.advancing(timeout=20)
    assert all(os.path.exists(f"/proc/{pid}") for pid in workload.pids)
    assert all(after[n] >= frozen[n] for n in frozen)
    assert not ck.exists()
    staged = list(tmp_path.glob(".ck.gpucr-tmp-*"))
    assert len(staged) == 1, staged
    r = gpucr("restore", str(staged[0]), env={"GPUCR_CRIU": criu_binary}, check=False)
    assert r.returncode == 1 and "temporary dir of a checkpoint that never finished" in r.stderr, r.stderr
    no_checkpoint(ck, {"GPUCR_CRIU": criu_binary})


def test_sigkill_of_gpucr_at_post_dump_with_cuda_is_swept(criu_binary: str, fsync_gate: Path, fake_cuda: FakeCuda,
                                                          tmp_path: Path) -> None:
    """With CUDA processes: gpucr SIGKILLed while CRIU waits on its post-dump answer. CRIU resumes the tasks, but their
    GPU state is still on the host (CHECKPOINTED) under gpucr's lease; the sweep (``gpucr recover`` here, as the
    daemon's timer or the next gpucr run would) restores and unlocks them and the workload runs again. The next
    checkpoint to the same DIR removes the dead run's temporary dir and succeeds."""
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        ck, gate = tmp_path / "ck", tmp_path / "blocked"
        env = {**os.environ, "GPUCR_CRIU": criu_binary, "LD_PRELOAD": str(fsync_gate), "FSYNC_GATE_BLOCK": str(gate)}
        p = subprocess.Popen([GPUCR, "checkpoint", "--pid", str(w.root), "--to", str(ck)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(gate.exists, timeout=60, what="gpucr to reach its post-dump fsync")
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        assert all(fake_cuda.state(x) == "CHECKPOINTED" for x in w.pids)
        assert all(os.path.exists(f"/proc/{x}") for x in w.pids)  # CRIU resumed the tasks, it never killed them
        leases = list((tmp_path / "state" / "leases").glob("*.json"))
        assert len(leases) == 1, leases
        assert not ck.exists() and len(list(tmp_path.glob(".ck.gpucr-tmp-*"))) == 1
        r = gpucr("recover", check=False)
        assert r.returncode == 0 and "restored" in r.stdout, (r.stdout, r.stderr)
        assert all(fake_cuda.state(x) == "RUNNING" for x in w.pids)
        assert not list((tmp_path / "state" / "leases").glob("*.json"))
        w.advancing()
        s = summary(gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), "--leave-running", "--json",
                          env={"GPUCR_CRIU": criu_binary}))
        assert sorted(x["pid"] for x in s["cuda_processes"]) == sorted(w.pids)
        assert (ck / "gpucr.json").exists() and not list(tmp_path.glob(".ck.gpucr-*"))
        w.advancing()
    finally:
        w.kill()


@pytest.mark.parametrize("via_memory", ["never", "always"])
def test_disk_full(criu_binary: str, fake_cuda: FakeCuda, small_fs: Callable[[int], Path], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch, via_memory: str) -> None:
    """The target filesystem fills up during the dump: the tmpfs is large enough for gpucr's own disk checks (the
    tree's memory, then its GPU data, with the engine's margin: both pass), and a criu wrapper fills it first. CRIU
    fails (straight to disk), or gpucr's copy of the dump out of memory does (``dump_via_memory``); gpucr rolls the
    CUDA processes back, the workload runs on, one error says the disk is full."""
    monkeypatch.setenv("GPUCR_CONFIG", node_config(tmp_path, dump_via_memory=via_memory)["GPUCR_CONFIG"])
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2, gpu_bytes=64 << 20)
    try:
        w.advancing()
        host = sum(rss_bytes(p) for p in tree_pids(w.root))
        need = disk_need(host, 2 * (64 << 20))  # what the engine asks once the GPU data is known (the larger check)
        small = small_fs(need + (64 << 20))  # room for the checks (RSS may grow a little meanwhile), filled below
        filler = tmp_path / "criu-filling"
        filler.write_text(f"#!/bin/sh\ncat /dev/zero > {small}/filler 2>/dev/null\n"
                          f"truncate -s -128K {small}/filler\nexec {criu_binary} \"$@\"\n")
        filler.chmod(0o700)
        ck = small / "ck"
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), env={"GPUCR_CRIU": str(filler)}, check=False)
        assert r.returncode == 1
        step = "criu-dump" if via_memory == "never" else "write-images"
        one_error(r.stderr, f"pid {w.root}", f"failed at step {step}", f"no space left on the filesystem of {ck}",
                  f"fix: the filesystem of {ck} is full")
        assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
        w.advancing()
        assert sorted(x.name for x in small.iterdir()) == ["filler"]
        assert (small / "filler").stat().st_size > need - (32 << 20)  # the filler, not an early check, failed it
        no_checkpoint(ck, {"GPUCR_CRIU": criu_binary})
    finally:
        w.kill()


# network-lock comes only for a tree in its own network namespace
@pytest.mark.parametrize("stage", ["pre-dump", "post-dump"])
def test_criu_killed_mid_dump(criu_binary: str, fake_cuda: FakeCuda, tmp_path: Path, stage: str) -> None:
    """criu SIGKILLed at a notification (at post-dump: after gpucr sealed the checkpoint, before CRIU hears back):
    the workload runs on, unlocked; the sealed checkpoint is withdrawn; restore accepts nothing there."""
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        ck = tmp_path / "ck"
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck),
                  env={"GPUCR_CRIU": killer_criu(tmp_path, criu_binary, stage)}, check=False)
        rolled_back(r, fake_cuda, w, ck, criu_binary, f"pid {w.root}", "failed at step criu-dump",
                    "exited without a final answer", "rolled back: 2 CUDA process(es) restored and unlocked",
                    f"no new checkpoint in {ck}", "fix:")
    finally:
        w.kill()


def test_criu_killed_at_post_dump_keeps_the_previous_checkpoint(criu_binary: str, workload: Workload,
                                                                 tmp_path: Path) -> None:
    """--force over a checkpoint, criu killed after gpucr sealed the new one: the old one is back in place, whole."""
    ck = tmp_path / "ck"
    gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--leave-running",
          env={"GPUCR_CRIU": criu_binary})
    before = (ck / "gpucr.json").read_text()
    r = gpucr("checkpoint", "--pid", str(workload.root), "--to", str(ck), "--force",
              env={"GPUCR_CRIU": killer_criu(tmp_path, criu_binary, "post-dump")}, check=False)
    assert r.returncode == 1
    one_error(r.stderr, "failed at step criu-dump", f"no new checkpoint in {ck}")
    assert (ck / "gpucr.json").read_text() == before and not list(tmp_path.glob(".ck.gpucr-*"))
    workload.advancing()
    r = gpucr("restore", "--quick-verify", str(ck), env={"GPUCR_CRIU": criu_binary}, check=False)
    # valid (the manifest checks pass); CRIU itself refuses only because the dumped pids are still in use
    assert "is corrupt" not in r.stderr and "not a complete" not in r.stderr, r.stderr


@pytest.mark.parametrize("fail,leave_running,step", [
    ("get-state", False, "get-state"),
    ("lock", False, "cuda-lock"),
    ("checkpoint", False, "cuda-checkpoint"),
    ("restore", True, "cuda-restore"),
    ("unlock", True, "cuda-unlock"),
])
def test_driver_error_at_each_step(criu_binary: str, fake_cuda: FakeCuda, tmp_path: Path, fail: str,
                                   leave_running: bool, step: str) -> None:
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        ck = tmp_path / "ck"
        fake_cuda.fail(fail, 999, once=True)
        r = gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck),
                  *(["--leave-running"] if leave_running else []), env={"GPUCR_CRIU": criu_binary}, check=False)
        rolled_back(r, fake_cuda, w, ck, criu_binary, f"pid {w.root}", f"failed at step {step}", "CUDA_ERROR_UNKNOWN",
                    "fix:", f"no new checkpoint in {ck}")
    finally:
        w.kill()
