"""Periodic checkpoints (``gpucr.io/checkpoint-interval``, ``gpucr.io/checkpoint-keep``) taken by the plugin daemon
of a running CRI container, on containerd 1.7.24 and 2.1.9 with runc, CRIU 4.2.x, gpucr's CRIU front and the fake
CUDA driver: they rotate (exactly ``keep`` stay, each valid), the newest restores into a new pod through
``gpucr.io/restore-from: periodic/<ns>/<pod>/<container>/latest`` with the counter and the driver's state going on,
a failing tick leaves the workload running and unlocked and the next one succeeds, a tick meeting another checkpoint
is skipped, the timers are re-armed by a restarted daemon and stop with the container, and bad values fail the
creation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.ckpt.container_lock import busy_reason, held
from nri_plugin.ckpt.restore_source import open_source
from nri_plugin.ckpt.series import LATEST, series_name
from nri_plugin.cri import CriError
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute
from tests.front.test_front_containerd import _n
from tests.front.restoring import start_cuda
from tests.front.test_gpufront import advancing, fake  # noqa: F401  (fixtures)
from tests.front.test_restore_from import _container, _lines, ctrd  # noqa: F401  (fixtures)
from tests.testenv import CRIU, REPO, TEST_ROOT, Containerd, installed_hook, wait_for

pytestmark = pytest.mark.integration

INSTANCE = f"{os.environ.get('GPUCR_INSTANCE') or 'default'}-pc"
PERIODIC = {"gpucr.io/checkpoint-interval": "2s", "gpucr.io/checkpoint-keep": "2"}


@pytest.fixture(scope="module")
def node(fake: FakeCuda) -> Iterator[dict[str, Path]]:  # noqa: F811
    """The node's dirs, root's alone; the config is written by :func:`plugin` (it names containerd's socket)."""
    d = TEST_ROOT / f"periodic-node-{INSTANCE}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700, parents=True)
    try:
        with installed_hook(d / "libexec") as hook:
            root = d / "checkpoints"
            root.mkdir(mode=0o700)
            yield {"state": d / "state", "criu": d / "criu", "hook": hook, "config": d / "config.toml",
                   "log": d / "plugin.log", "root": root, "dir": d}
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Daemon:
    """``gpucr plugin`` as a node runs it, restartable."""

    def __init__(self, ctrd: Containerd, node: dict[str, Path]) -> None:
        self.ctrd, self.node = ctrd, node
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.node["log"]
        mark = len(log.read_text()) if log.exists() else 0
        self.proc = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "-v", "plugin", "--socket",
                                      self.ctrd.nri_socket, "--config", str(self.node["config"]), "--log-file",
                                      str(log)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: log.exists() and "synchronized" in log.read_text()[mark:],
                 what="gpucr plugin to register and synchronize")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None

    def log(self) -> str:
        return self.node["log"].read_text()


@pytest.fixture(scope="module")
def daemon(ctrd: Containerd, node: dict[str, Path], fake: FakeCuda) -> Iterator[Daemon]:  # noqa: F811
    node["config"].write_text(
        f'state_dir = "{node["state"]}"\ncriu_config_dir = "{node["criu"]}"\nhook_path = "{node["hook"]}"\n'
        f'runc_criu_config = "{node["dir"] / "runc.conf"}"\nlibcuda = "{fake.lib}"\nlock_timeout_ms = 2000\n'
        f'driver_call_timeout_s = 10\ncheckpoint_root = "{node["root"]}"\ncontainerd_address = "{ctrd.address}"\n'
        f'checkpoint_interval_min_s = 2\ncheckpoint_keep_max = 5\ncriu_path = "{CRIU}"\n')
    node["log"].unlink(missing_ok=True)
    d = Daemon(ctrd, node)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        shutil.rmtree(node["root"] / "periodic", ignore_errors=True)  # the next containerd version starts afresh


def _done(log: str, what: str) -> int:
    return log.count(f"periodic checkpoint of {what} done")


def _series(root: Path, pod_cfg: Any, name: str) -> tuple[str, Path]:
    s = series_name(pod_cfg.metadata.namespace, pod_cfg.metadata.name, name)
    return s, root / s


def _checkpoints(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith(".") and p.name != LATEST and
                  (p / "gpucr.json").exists())


def test_periodic_checkpoints_rotate_and_the_newest_restores(
        ctrd: Containerd, daemon: Daemon, front_route: FrontRoute, node: dict[str, Path],  # noqa: F811
        fake: FakeCuda, tmp_path: Path) -> None:  # noqa: F811
    """Interval 2 s, keep 2: after several ticks (and a daemon restart, which re-arms the timer at Synchronize)
    exactly the 2 newest checkpoints remain, each passing restore-from's checks (manifest and sha256), ``latest``
    naming the newest; a foreign dir with a timestamp name is left alone; the timer stops with the container; the
    newest restores into a new pod, counter and fake driver state going on."""
    data = tmp_path / "data"
    data.mkdir()
    root = node["root"]
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with ctrd.pod() as (c, pod_id, cfg):
            name, sdir = _series(root, cfg, "cuda")
            sdir.mkdir(mode=0o700, parents=True)
            foreign = sdir / "20000101T000000Z"  # oldest by name, but not gpucr's: never counted nor removed
            foreign.mkdir(mode=0o700)
            (foreign / "mine").write_text("keep me")
            cid, pid = start_cuda(c, pod_id, cfg, _container(fake, data, "cuda", PERIODIC, ctrd.image), fake)
            what = f"container cuda in pod default/{cfg.metadata.name}"
            wait_for(lambda: _done(daemon.log(), what) >= 2, what="two periodic checkpoints", timeout=60)
            assert f"gpucr.io/restore-from: {name}/latest" in daemon.log()
            daemon.stop()
            mark = len(daemon.log())
            daemon.start()  # Synchronize re-arms the running container's timer
            wait_for(lambda: f"periodic checkpoints of {what} every 2s" in daemon.log()[mark:],
                     what="the timer re-armed after the restart")
            wait_for(lambda: _done(daemon.log(), what) >= 3, what="a third periodic checkpoint", timeout=60)
            lo = _n(data)  # the next checkpoint starts after this: the newest holds a counter at least this high
            wait_for(lambda: _done(daemon.log(), what) >= 4, what="four periodic checkpoints", timeout=60)
            n = _done(daemon.log(), what)
            wait_for(lambda: _done(daemon.log(), what) > n, what="one more", timeout=30)
            c.stop_container(cid, 0)  # now, while the timer sleeps: no tick meets a stopping container
            hi = _n(data)
            wait_for(lambda: f"periodic checkpoints of {what} stopped" in daemon.log(), what="the timer to stop")
            time.sleep(0.5)  # a tick that was running when it stopped has finished
            n_done = _done(daemon.log(), what)
            time.sleep(4.5)  # two intervals: no tick after the stop
            assert _done(daemon.log(), what) == n_done
            c.remove_container(cid)
    log = daemon.log()
    assert f"periodic checkpoint of {what} (container {cid}) failed" not in log, log[-3000:]
    kept = _checkpoints(sdir)
    assert len(kept) == 2 and kept[0] != foreign.name, (kept, log[-2000:])
    assert (foreign / "mine").read_text() == "keep me"
    assert os.readlink(sdir / LATEST) == kept[-1]
    assert not [p for p in sdir.iterdir() if p.name.startswith(".")]  # no staging or half-deleted dir left
    for ck in kept:
        src = open_source(root, f"{name}/{ck}")
        assert src.meta.extra["periodic"]["series"] == name and src.meta.container_id == cid
        assert src.marker is not None and src.marker.processes, src
        assert (src.meta.criu_version, src.meta.kernel_release) == (cli_version(str(CRIU)), os.uname().release)
        assert (sdir / ck).stat().st_mode & 0o077 == 0
    latest = open_source(root, f"{name}/{LATEST}")
    assert latest.path == (sdir / kept[-1]).resolve()

    data2 = tmp_path / "data2"
    shutil.copytree(data, data2)
    before = len(_lines(data2))
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with ctrd.pod() as (c, pod_id, cfg):
            conf = _container(fake, data2, "restored", {"gpucr.io/restore-from": f"{name}/{LATEST}"}, ctrd.image)
            new = c.create_container(pod_id, conf, cfg)
            c.start_container(new)
            wait_for(lambda: len(_lines(data2)) >= before + 3, what="the restored counter", timeout=30)
            after = _lines(data2)[before:]
            assert lo <= after[0] - 1 <= hi, (lo, hi, after)
            assert after == list(range(after[0], after[0] + len(after)))
            npid = int(c.container_status(new, verbose=True)[1]["info"]["pid"])
            assert npid != pid and fake.state(npid) == "RUNNING"
            assert f"will be restored from checkpoint '{name}/{LATEST}'" in daemon.log()
            c.stop_container(new, 0)
            c.remove_container(new)
    assert _checkpoints(sdir) == kept  # a restore never changes the series


def test_failed_tick_leaves_the_container_running_and_the_next_succeeds(
        ctrd: Containerd, daemon: Daemon, front_route: FrontRoute, node: dict[str, Path],  # noqa: F811
        fake: FakeCuda, tmp_path: Path) -> None:  # noqa: F811
    """The fake driver refuses the CUDA lock: the tick fails with one error line naming the container and the step,
    counts as a periodic error in the metrics spool, leaves no staging dir and no lock, and the workload runs on;
    a tick meeting another gpucr checkpoint of the container is skipped; once the driver locks again, the next
    tick succeeds."""
    data = tmp_path / "data"
    data.mkdir()
    spool = node["state"] / "metrics"
    shutil.rmtree(spool, ignore_errors=True)
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with ctrd.pod() as (c, pod_id, cfg):
            _, sdir = _series(node["root"], cfg, "cuda")
            cid, pid = start_cuda(c, pod_id, cfg, _container(fake, data, "cuda", PERIODIC, ctrd.image), fake)
            what = f"container cuda in pod default/{cfg.metadata.name}"
            wait_for(lambda: _done(daemon.log(), what) >= 1, what="a periodic checkpoint", timeout=60)
            fake.fail("lock", 999)
            try:
                mark = len(daemon.log())
                wait_for(lambda: f"periodic checkpoint of {what} (container {cid}) failed at step checkpoint"
                         in daemon.log()[mark:], what="a failed tick", timeout=30)
            finally:
                fake.clear_failures()
            err = [ln for ln in daemon.log()[mark:].splitlines() if " ERROR " in ln]
            assert len(err) >= 1 and "the container keeps running" in err[0], err
            assert fake.state(pid) == "RUNNING"
            advancing(data)
            assert busy_reason(node["state"], cid) == ""
            events = [json.loads(p.read_text()) for p in spool.glob("*.json")]
            assert any(e["path"] == "periodic" and e["result"] == "error" for e in events), events
            with held(node["state"], cid, "the test's manual checkpoint"):  # as `gpucr checkpoint` holds it
                mark = len(daemon.log())
                wait_for(lambda: f"periodic checkpoint of {what} skipped" in daemon.log()[mark:],
                         what="a skipped tick", timeout=30)
            n = _done(daemon.log(), what)
            wait_for(lambda: _done(daemon.log(), what) > n, what="a tick after the failure", timeout=60)
            assert fake.state(pid) == "RUNNING"
            c.stop_container(cid, 0)
    assert not [p for p in sdir.iterdir() if p.name.startswith(".") and p.name != ".latest"]
    assert 1 <= len(_checkpoints(sdir)) <= 2


@pytest.mark.parametrize("ann,expect", [
    ({"gpucr.io/checkpoint-interval": "1s"}, "accepted: at least 2s (the node's checkpoint_interval_min_s)"),
    ({"gpucr.io/checkpoint-interval": "often"}, "accepted: a duration from 1s to 168h"),
    ({"gpucr.io/checkpoint-interval": "30s", "gpucr.io/checkpoint-keep": "0"}, "gpucr.io/checkpoint-keep='0' is"),
    ({"gpucr.io/checkpoint-interval": "30s", "gpucr.io/checkpoint-keep": "9"}, "accepted: 1 to 5 (the node's "
                                                                                "checkpoint_keep_max)"),
    ({"gpucr.io/checkpoint-keep": "2"}, "without gpucr.io/checkpoint-interval"),
])
def test_bad_periodic_annotations_fail_creation(ctrd: Containerd, daemon: Daemon, node: dict[str, Path],  # noqa: F811
                                                fake: FakeCuda, tmp_path: Path,  # noqa: F811
                                                ann: dict[str, str], expect: str) -> None:
    with ctrd.pod() as (c, pod_id, cfg):
        with pytest.raises(CriError) as ei:
            c.create_container(pod_id, _container(fake, None, "bad", ann, ctrd.image), cfg)
        assert not c.list_containers(pod_id)  # nothing half-created
    msg = str(ei.value)
    assert expect in msg and "container bad in pod default/" in msg, msg
