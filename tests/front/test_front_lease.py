"""Faults survived by the CRIU front: SIGKILL of the front at each phase of a managed CUDA container's dump (after
lock, during the CUDA checkpoint, during CRIU's dump, during the CUDA restore), under real containerd 1.7.24 and
2.1.9 with gpucr's plugin daemon sweeping leases every second; SIGTERM to the front mid-dump.

``ctr t checkpoint`` pauses the task, runc runs the front, the front's hooks stop at the exact phase (test-only
``test_pause_at`` in front.conf, :func:`nri_plugin.ckpt.lease.pause_point`), and the test checks it is held there
(the fake reports LOCKED/CHECKPOINTED) before it kills the process running the hooks. Then containerd's checkpoint
fails and it resumes its task; the daemon's sweep restores and unlocks the CUDA state; the counter advances.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ckpt.test_lease_faults import PHASES, SWEEP_S, WITHIN_S  # the CLI's lease faults, through the front
from tests.front.conftest import FrontRoute
from tests.front.test_gpufront import (  # noqa: F401 (fixtures)
    advancing,
    cri_workload,
    fake,
    freezer_state,
    gpu_node,
    plugin,
)
from tests.testenv import TEST_ROOT, Containerd, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(fake: object) -> Iterator[dict[str, Path]]:
    """test_gpufront's node (root's alone, the hook installed by install/hook.sh), with a one-second lease sweep."""
    d = TEST_ROOT / f"front-lease-node-{os.environ.get('GPUCR_INSTANCE') or 'default'}"
    with gpu_node(d, fake, lease_sweep_interval_s=SWEEP_S) as paths:  # type: ignore[arg-type]
        yield paths


@pytest.fixture
def paused_front(front_route: FrontRoute, node: dict[str, Path], fake: object,
                 tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[FrontRoute, Path]]:
    pause = tmp_path / "front-paused.pid"
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib), test_pause_at=request.param,  # type: ignore[attr-defined]
                                test_pause_file=str(pause)):
        yield front_route, pause
    fake.clear_failures()  # type: ignore[attr-defined]


def _checkpoint_paused(ctrd: Containerd, w: object, images: Path, pause: Path, fake: object, point: str,
                       node: dict[str, Path]) -> tuple[threading.Thread, dict[str, object], int]:
    out: dict[str, object] = {}

    def run() -> None:
        out["r"] = ctrd.ctr("t", "checkpoint", "--image-path", str(images), w.cid,  # type: ignore[attr-defined]
                            namespace="k8s.io", check=False)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_for(lambda: pause.exists() or not t.is_alive(), timeout=60, what=f"the front to pause at {point}")
    assert pause.exists(), out
    pid = int(pause.read_text())
    want, phase = PHASES[point]
    assert fake.state(w.pid) == want, fake.state(w.pid)  # type: ignore[attr-defined]
    leases = list((node["state"] / "leases").glob("*.json"))
    assert len(leases) == 1 and f'"phase": "{phase}"' in leases[0].read_text(), [x.read_text() for x in leases]
    assert '"holder": "criu front"' in leases[0].read_text()
    return t, out, pid


@pytest.mark.parametrize("paused_front", list(PHASES), indirect=True)
def test_sigkill_front_at_each_phase_daemon_rolls_back(front_containerd: Containerd,
                                                       plugin: subprocess.Popen[bytes],  # noqa: F811
                                                       paused_front: tuple[FrontRoute, Path],
                                                       node: dict[str, Path], fake: object,  # noqa: F811
                                                       tmp_path: Path) -> None:
    route, pause = paused_front
    point = route.conf.read_text().split("test_pause_at = ", 1)[1].split("\n", 1)[0]
    with cri_workload(front_containerd, fake, tmp_path) as (_c, w):  # type: ignore[arg-type]
        assert freezer_state(w.cgroup) == "THAWED"
        t, out, pid = _checkpoint_paused(front_containerd, w, tmp_path / "img", pause, fake, point, node)
        mark = node["log"].stat().st_size
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: fake.state(w.pid) == "RUNNING", timeout=SWEEP_S + 20,  # type: ignore[attr-defined]
                 what="the daemon's sweep to restore and unlock the container's CUDA process")
        took = time.monotonic() - t0
        assert took <= WITHIN_S, f"rolled back {took:.1f}s after the kill (sweep interval {SWEEP_S}s)"
        t.join(120)
        assert out["r"].returncode != 0  # type: ignore[attr-defined]
        wait_for(lambda: freezer_state(w.cgroup) == "THAWED", what="the cgroup as found (containerd resumes it)")
        wait_for(lambda: not list((node["state"] / "leases").iterdir()), timeout=10, what="the lease to be removed")
        advancing(w.data)
        with node["log"].open() as f:
            f.seek(mark)
            log = f.read()
        line = next((ln for ln in log.splitlines() if "rolled back the lease of container cuda" in ln), "")
        assert f"(pid {w.pid})" in line and "criu front pid" in line and "holder is gone" in line, log
        want = "restored and unlocked" if PHASES[point][0] == "CHECKPOINTED" else "unlocked"
        assert f"pid {w.pid} {want}" in line, line


@pytest.mark.parametrize("paused_front", ["checkpointed"], indirect=True)
def test_sigterm_front_rolls_back_before_exit(front_containerd: Containerd, node: dict[str, Path],
                                              paused_front: tuple[FrontRoute, Path], fake: object,  # noqa: F811
                                              tmp_path: Path) -> None:
    """The front itself rolls back on SIGTERM (its own log says so), removes its lease, and exits."""
    route, pause = paused_front
    with cri_workload(front_containerd, fake, tmp_path, managed=False) as (_c, w):  # type: ignore[arg-type]
        mark = route.log_mark()
        t, out, pid = _checkpoint_paused(front_containerd, w, tmp_path / "img", pause, fake, "checkpointed", node)
        os.kill(pid, signal.SIGTERM)
        t.join(120)
        assert out["r"].returncode != 0  # type: ignore[attr-defined]
        assert fake.state(w.pid) == "RUNNING"  # type: ignore[attr-defined]
        wait_for(lambda: freezer_state(w.cgroup) == "THAWED", what="containerd to resume its task")
        assert not list((node["state"] / "leases").iterdir())
        log = route.log_since(mark)
        assert "rolled back the lease of" in log and "the front got SIGTERM" in log, log
        assert f"pid {w.pid} restored and unlocked" in log, log
        advancing(w.data)
