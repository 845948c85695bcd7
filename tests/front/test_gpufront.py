"""GPU-safe standard checkpoints: the CRIU front with gpucr's CUDA hooks (``nri_plugin.handlers.front_cuda``), the
policy plugin (``gpucr plugin``) and the fake CUDA driver, under real containerd 1.7.24 and 2.1.9, runc 1.1.5 and CRIU 4.2.x.

The CUDA workload is the fake's static container app (``tests/fakes/fake_cuda_app.c``): it maps ``/dev/nvidia0`` (a
block device node given to the container as a device, which CRIU refuses to dump as it refuses a real GPU mapping)
unless CHECKPOINTED, keeps its CUDA state in its own memory (so a restored copy is in the state it was dumped in, and
every fake driver call on it blocks while its cgroup is frozen or it is stopped, as driver 580 does), and its counter
stops while it is LOCKED or CHECKPOINTED. So a passing test means gpucr really checkpointed CUDA before CRIU dumped,
and really restored and unlocked it afterwards; ``test_without_cuda_steps_ctr_checkpoint_fails_like_the_real_driver``
keeps the negative control.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.ckpt.cuda import CudaTimeoutError, Driver
from nri_plugin.ckpt.stopped import await_stopped
from nri_plugin.handlers.front_cuda import MARKER
from nri_plugin.handlers.metrics import Metrics
from nri_plugin.host.proc import cgroup_path
from nri_plugin.policy.records import ContainerRecord, RecordedPolicy, remove_record, write_record
from tests import cgroups
from tests.fakes.cuda import FakeCuda, build, make_device
from tests.front.conftest import FrontRoute
from tests.front.test_front_containerd import _bundle, _n, _runc_pid, _subreaper, ctr_counter
from tests.testenv import CRIU, REPO, TEST_ROOT, Containerd, installed_hook, node_config, running_plugin, wait_for

pytestmark = pytest.mark.integration

#: where containers see the fake: its directory (library, app, state dir) and its GPU device node
FAKE_MNT, GPU_DEV = "/fakecuda", "/dev/nvidia0"
#: the fake CUDA app: maps the GPU device, appends its counter to /data/log while RUNNING
COUNTER = [f"{FAKE_MNT}/fakecuda-app", "/data/log"]
PLAIN_COUNTER = "i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.2; done"
GIB = 1 << 30
GPU0, GPU1 = "GPU-00000000-0000-4000-8000-000000000000", "GPU-00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeCuda]:
    """The fake driver, its state dir beside it (``<lib>.d``: what the front, started by runc, finds whatever its
    environment)."""
    root = TEST_ROOT / f"gpufront-fake-{os.environ.get('GPUCR_INSTANCE') or 'default'}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    lib = build(root)
    state = Path(f"{lib}.d")  # the fake uses it whatever FAKE_CUDA_DIR a process (containerd, a shim) inherited
    state.mkdir(mode=0o700)
    try:
        yield FakeCuda(lib, state, make_device(root / "nvidia0"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def node(fake: FakeCuda) -> Iterator[dict[str, Path]]:
    """The node's hook (installed by install/hook.sh), config, state and CRIU config dirs, root's alone (the plugin
    uses nothing others could change: nri_plugin.host.paths)."""
    with gpu_node(TEST_ROOT / f"gpufront-node-{os.environ.get('GPUCR_INSTANCE') or 'default'}", fake) as paths:
        yield paths


@contextlib.contextmanager
def gpu_node(d: Path, fake: FakeCuda, **config: object) -> Iterator[dict[str, Path]]:
    """A node for the front's CUDA tests in the fresh directory ``d`` (removed afterwards): the OCI hook installed by
    install/hook.sh, a node config (``config``: more of its keys) naming state and CRIU config dirs and the fake
    driver, all root's alone (the plugin uses nothing others could change: nri_plugin.host.paths)."""
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700, parents=True)
    try:
        with installed_hook(d / "libexec") as hook:
            paths = {"state": d / "state", "criu": d / "criu", "hook": hook, "config": d / "config.toml",
                     "log": d / "plugin.log", "nvidia": fake.device, "fake": fake.lib.parent}
            paths["config"].write_text(
                f'state_dir = "{paths["state"]}"\ncriu_config_dir = "{paths["criu"]}"\nhook_path = "{hook}"\n'
                f'runc_criu_config = "{d / "runc.conf"}"\nlibcuda = "{fake.lib}"\nlock_timeout_ms = 2000\n'
                f'driver_call_timeout_s = 10\ncriu_path = "{CRIU}"\n'
                + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
            yield paths
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def plugin(front_containerd: Containerd, node: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    """gpucr's policy plugin on this containerd's NRI socket (it manages annotated CRI containers)."""
    with running_plugin(front_containerd.nri_socket, node["log"], node["config"]) as proc:
        yield proc


@pytest.fixture
def gpu_front(front_route: FrontRoute, node: dict[str, Path], fake: FakeCuda) -> Iterator[FrontRoute]:
    """The front with gpucr's CUDA hooks, reading this test's node config, NVML from the fake."""
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        yield front_route
    fake.clear_failures()


def fake_env(fake: FakeCuda, device: str = GPU_DEV) -> dict[str, str]:
    """The fake CUDA app's environment in a container that mounts the fake at FAKE_MNT."""
    return {"FAKE_CUDA_DIR": f"{FAKE_MNT}/{fake.state_dir.name}", "FAKE_CUDA_LIB": f"{FAKE_MNT}/{fake.lib.name}",
            "FAKE_CUDA_DEVICE": device}


def cuda_running(fake: FakeCuda, pid: int, device: str = GPU_DEV) -> None:
    """The container's app registered itself: RUNNING, its GPU device mapped (what CRIU refuses to dump)."""
    wait_for(lambda: fake.state(pid) == "RUNNING", what=f"pid {pid} to register with the fake CUDA driver")
    assert fake.maps_device(pid, device)


def advancing(data: Path) -> None:
    a = _n(data)
    wait_for(lambda: _n(data) > a, timeout=5, what="counter to advance")


def freezer_state(cgroup: str) -> str:
    """THAWED / FREEZING / FROZEN of a container's cgroup path, read through the product's cgroup module."""
    return cgroups.state(cgroups.at(cgroup))


class CriWorkload:
    """A CRI container running COUNTER (managed when its pod carries gpucr.io/checkpoint=enabled)."""

    def __init__(self, ctrd: Containerd, client: Any, pod_id: str, pod_cfg: Any, data: Path,
                 fake: FakeCuda | None) -> None:
        self.data = data
        mounts = [(str(data), "/data", False)] + ([(str(fake.lib.parent), FAKE_MNT, False)] if fake else [])
        devices = [(str(fake.device), GPU_DEV, "rw")] if fake else []
        self.cid = ctrd.run_container(client, pod_id, pod_cfg, "cuda" if fake else "plain",
                                      COUNTER if fake else ["/bin/sh", "-c", PLAIN_COUNTER],
                                      env=fake_env(fake) if fake else {}, mounts=mounts, devices=devices)
        _, info = client.container_status(self.cid, verbose=True)
        self.pid = int(info["info"]["pid"])
        self.cgroup = _cgroup_of(self.pid)
        wait_for(lambda: _n(data) >= 2, what="CRI counter to start")


def _cgroup_of(pid: int) -> str:
    path = cgroup_path(pid)
    assert path not in ("", "/"), f"pid {pid} has no container cgroup (got {path!r})"
    assert pid in cgroups.at(path).pids()
    return path


@contextlib.contextmanager
def cri_workload(ctrd: Containerd, fake: FakeCuda | None, tmp_path: Path,
                 managed: bool = True) -> Iterator[tuple[Any, CriWorkload]]:
    """A CRI container: the fake CUDA app (``fake`` given: it is RUNNING on return) or a plain shell counter."""
    data = tmp_path / "data"
    data.mkdir()
    ann = {"gpucr.io/checkpoint": "enabled"} if managed else {}
    with ctrd.pod(annotations=ann) as (c, pod_id, cfg):
        w = CriWorkload(ctrd, c, pod_id, cfg, data, fake)
        if fake:
            cuda_running(fake, w.pid)
        yield c, w


def _marker(images: Path) -> dict[str, Any]:
    return json.loads((images / MARKER).read_text())  # type: ignore[no-any-return]


# -- the standard commands on a managed container ---------------------------------------------------------------

COMMANDS = ["ctr-t-checkpoint", "ctr-c-checkpoint-task", "pause-then-checkpoint"]


@pytest.mark.parametrize("command", COMMANDS)
def test_managed_cuda_container_checkpoint(front_containerd: Containerd, plugin: subprocess.Popen[bytes],
                                           gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
                                           tmp_path: Path, command: str) -> None:
    """Each command reaches CRIU with the cgroup FROZEN; the front thaws, locks + checkpoints CUDA, re-freezes, lets
    CRIU dump, then restores + unlocks so the workload runs on (CUDA RUNNING, cgroup as the caller left it)."""
    _checkpoint_managed(front_containerd, gpu_front, node, fake, tmp_path, command)


@pytest.mark.containerd(min="2.0")  # 1.7 does not implement CRI CheckpointContainer: tests/containerd/test_tasks.py
def test_managed_cuda_container_cri_checkpoint(front_containerd: Containerd, plugin: subprocess.Popen[bytes],
                                               gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
                                               tmp_path: Path) -> None:
    """CRI CheckpointContainer (pause, checkpoint, resume), as the kubelet calls it: the same GPU-safe dump."""
    _checkpoint_managed(front_containerd, gpu_front, node, fake, tmp_path, "cri-checkpoint")


def _checkpoint_managed(ctrd: Containerd, gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
                        tmp_path: Path, command: str) -> None:
    with cri_workload(ctrd, fake, tmp_path) as (c, w):
        rec = json.loads((node["state"] / "containers" / f"{w.cid}.json").read_text())
        assert rec["managed"] and rec["pid"] == w.pid, rec
        images = tmp_path / "img"
        mark = gpu_front.log_mark()
        ref = f"localhost/gf-{uuid.uuid4().hex[:6]}:ckpt"
        if command == "ctr-t-checkpoint":
            ctrd.ctr("t", "checkpoint", "--image-path", str(images), w.cid, namespace="k8s.io")
        elif command == "ctr-c-checkpoint-task":
            try:
                ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", w.cid, ref, namespace="k8s.io")
            finally:
                ctrd.ctr("images", "rm", "--sync", ref, namespace="k8s.io", check=False)
        elif command == "pause-then-checkpoint":
            # what GRIT's agent does: pause, checkpoint, and resume later itself
            ctrd.ctr("t", "pause", w.cid, namespace="k8s.io")
            assert freezer_state(w.cgroup) == "FROZEN"
            ctrd.ctr("t", "checkpoint", "--image-path", str(images), w.cid, namespace="k8s.io")
            # the caller's pause is kept (the front froze it again), with the CUDA state back to RUNNING
            assert freezer_state(w.cgroup) == "FROZEN"
            assert fake.state(w.pid) == "RUNNING"
            ctrd.ctr("t", "resume", w.cid, namespace="k8s.io")
        else:
            archive = tmp_path / "ckpt.tar"
            c.checkpoint_container(w.cid, str(archive))
            images = tmp_path / "unpacked"
            images.mkdir()
            subprocess.run(["tar", "-xf", str(archive), "-C", str(images)], check=True)
            images = images / "checkpoint"
        log = gpu_front.log_since(mark)
        assert "request DUMP" in log and "DUMP success=True" in log, log
        assert f"DUMP of container cuda in pod default/" in log and f"(pid {w.pid}), managed (" in log, log
        assert "thawed it, locked and checkpointed 1 CUDA process(es)" in log, log
        assert "restored and unlocked 1 CUDA process(es)" in log, log
        # the images were fsynced at CRIU's post-dump, before CRIU's answer reached runc
        assert "fsynced at post-dump" in log and log.index("fsynced at post-dump") < log.index("DUMP success=True"), log
        assert fake.state(w.pid) == "RUNNING"
        assert freezer_state(w.cgroup) == "THAWED"
        advancing(w.data)
        if command != "ctr-c-checkpoint-task":
            m = _marker(images)
            assert m["container_id"] == w.cid and m["managed"] is True
            assert [p["pid"] for p in m["processes"]] == [w.pid] and m["processes"][0]["state"] == "RUNNING"
            assert any((images / n).exists() for n in ("pstree.img", "inventory.img"))


def test_without_cuda_steps_ctr_checkpoint_fails_like_the_real_driver(
        front_containerd: Containerd, plugin: subprocess.Popen[bytes], front_route: FrontRoute, fake: FakeCuda,
        tmp_path: Path) -> None:
    """The negative control of the test above: the same managed fake-CUDA container, with gpucr's CUDA steps off (the
    front configured with no hooks, as `install/front.sh route --hooks none` makes it: a pure relay to CRIU).
    `ctr c checkpoint --task` then fails as it does on an H200 without gpucr (bench/results/gpu_front.md): CRIU
    refuses the GPU mapping. The container runs on, its CUDA state untouched."""
    ctrd = front_containerd
    ref = f"localhost/gf-{uuid.uuid4().hex[:6]}:ckpt"
    with front_route.configured(hooks='""'), cri_workload(ctrd, fake, tmp_path) as (_c, w):
        mark = front_route.log_mark()
        try:
            r = ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", w.cid, ref, namespace="k8s.io", check=False)
        finally:
            ctrd.ctr("images", "rm", "--sync", ref, namespace="k8s.io", check=False)
        assert r.returncode != 0, r.stdout
        assert "request DUMP" not in front_route.log_since(mark)  # no gpucr work: CRIU ran on its own
        dump_log = Path(r.stderr.split("path= ", 1)[1].split(":", 1)[0].strip())
        text = dump_log.read_text()
        assert "Can't handle non-regular mapping on " in text, text[-3000:]
        assert "Dumping FAILED" in text, text[-3000:]
        assert fake.state(w.pid) == "RUNNING" and fake.maps_device(w.pid, GPU_DEV)
        wait_for(lambda: freezer_state(w.cgroup) == "THAWED", what="containerd to resume the task")
        advancing(w.data)


def test_fake_lock_blocks_on_a_paused_container(front_containerd: Containerd, plugin: subprocess.Popen[bytes],
                                                node: dict[str, Path], fake: FakeCuda, tmp_path: Path) -> None:
    """The hazard gpucr's ordering avoids: a CUDA lock of a paused container does not return (bounded here by the
    driver wrapper's watchdog); it completes only once the container is resumed."""
    ctrd = front_containerd
    with cri_workload(ctrd, fake, tmp_path) as (_c, w):
        ctrd.ctr("t", "pause", w.cid, namespace="k8s.io")
        drv = Driver(str(fake.lib))
        drv.lock_margin_s = 0.0
        t0 = time.monotonic()
        try:
            with pytest.raises(CudaTimeoutError, match="did not return"):
                drv.lock(w.pid, timeout_ms=1500)
            assert time.monotonic() - t0 >= 1.4
            assert fake.state(w.pid) == "RUNNING"  # still blocked, nothing happened
        finally:
            ctrd.ctr("t", "resume", w.cid, namespace="k8s.io")
        assert drv.wait_pending(w.pid, 10)  # the blocked call returns once thawed
        assert fake.state(w.pid) == "LOCKED"
        n = _n(w.data)
        time.sleep(0.6)  # three ticks' worth: a locked app makes no progress
        assert _n(w.data) == n
        drv.unlock(w.pid)
        assert fake.state(w.pid) == "RUNNING"
        advancing(w.data)


def test_lock_failure_leaves_container_running_with_clear_error(
        front_containerd: Containerd, plugin: subprocess.Popen[bytes], gpu_front: FrontRoute,
        node: dict[str, Path], fake: FakeCuda, tmp_path: Path) -> None:
    ctrd = front_containerd
    with cri_workload(ctrd, fake, tmp_path) as (c, w):
        fake.fail("lock", 999)
        mark = gpu_front.log_mark()
        r = ctrd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), w.cid, namespace="k8s.io",
                     check=False)
        assert r.returncode != 0
        assert "errno 125" in r.stderr, r.stderr  # runc 1.1 shows errno and the log path; gpucr's text is there
        dump_log = Path(r.stderr.split("path= ", 1)[1].split(":", 1)[0].strip())
        text = dump_log.read_text()
        log = gpu_front.log_since(mark)
        for where in (text, log):
            assert f"GPU-safe dump of container cuda in pod default/" in where, where
            assert f"(pid {w.pid}) failed at step cuda-lock" in where and "CUDA_ERROR_UNKNOWN" in where, where
            assert "fix: the GPU work did not drain in time" in where, where
        assert "rolled back" in text
        assert "started /" not in log.split("request DUMP", 1)[1]  # CRIU never ran
        assert fake.state(w.pid) == "RUNNING"
        assert freezer_state(w.cgroup) == "THAWED"
        advancing(w.data)
        if ctrd.major_minor >= (2, 0):  # the same through CRI: the error reaches the CRI caller
            with pytest.raises(Exception) as ei:
                c.checkpoint_container(w.cid, str(tmp_path / "ckpt.tar"))
            assert "criu" in str(ei.value).lower()
            assert fake.state(w.pid) == "RUNNING" and freezer_state(w.cgroup) == "THAWED"
            advancing(w.data)


def test_unmanaged_non_cuda_container_is_handed_to_criu(
        front_containerd: Containerd, plugin: subprocess.Popen[bytes], gpu_front: FrontRoute,
        node: dict[str, Path], tmp_path: Path) -> None:
    ctrd = front_containerd
    with cri_workload(ctrd, None, tmp_path, managed=False) as (_c, w):
        assert not (node["state"] / "containers" / f"{w.cid}.json").exists()
        mark = gpu_front.log_mark()
        images = tmp_path / "img"
        ctrd.ctr("t", "checkpoint", "--image-path", str(images), w.cid, namespace="k8s.io")
        log = gpu_front.log_since(mark)
        assert "DUMP from runtime pid" in log and "no gpucr work, handing swrk 3" in log, log
        assert "request DUMP" not in log and not (images / MARKER).exists()
        advancing(w.data)


# -- ctr containers (never seen by NRI: unmanaged, protected by the node policy) and ctr c restore ----------------

@contextlib.contextmanager
def ctr_workload(ctrd: Containerd, fake: FakeCuda, tmp_path: Path,
                 *extra: str) -> Iterator[tuple[str, Path, str, str]]:
    """A ctr container running the fake CUDA app (RUNNING on return). ctr's --device keeps the host path inside the
    container: it gets the host's loop device node itself (same numbers as the fake's node)."""
    dev = str(fake.host_node)
    with ctr_counter(ctrd, tmp_path, *(f"--env={k}={v}" for k, v in fake_env(fake, dev).items()), "--device", dev,
                     "--mount", f"type=bind,src={fake.lib.parent},dst={FAKE_MNT},options=rbind:rw", *extra,
                     prefix="gf", command=COUNTER) as (name, data, cgroup):
        cuda_running(fake, _task_pid(ctrd, name), dev)
        yield name, data, cgroup, ctrd.info["dir"]


def _task_pid(ctrd: Containerd, name: str, namespace: str = "default") -> int:
    for line in ctrd.ctr("t", "ls", namespace=namespace).stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == name:
            return int(f[1])
    raise AssertionError(f"task {name} not listed in namespace {namespace}")


def test_ctr_container_checkpoint_and_restore_unmanaged_cuda(
        front_containerd: Containerd, gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
        tmp_path: Path) -> None:
    """`ctr c checkpoint --task` of a container the plugin never saw (ctr containers skip NRI, as a container created
    while the plugin is down): protected by default, logged as unmanaged; `ctr c restore` brings it back with the
    counter continuing and the restored pid's CUDA state RUNNING again."""
    ctrd = front_containerd
    ref = f"localhost/gf-{uuid.uuid4().hex[:6]}:ckpt"
    with ctr_workload(ctrd, fake, tmp_path) as (name, data, cgroup, _d):
        pid = _task_pid(ctrd, name)
        mark = gpu_front.log_mark()
        Metrics(node["state"]).ingest()  # drop earlier tests' events: only this test's are counted below
        metrics = Metrics(node["state"])
        lo = _n(data)
        ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", name, ref)
        hi = _n(data)
        assert metrics.ingest() == 1  # the front spooled the dump for the daemon's metrics
        assert metrics.checkpoints.labels("ok", "front")._value.get() == 1
        assert {"lock", "cuda_checkpoint", "criu"} <= {s.labels["step"] for s in metrics.steps.collect()[0].samples
                                                       if s.name.endswith("_count") and s.value == 1}
        assert metrics.bytes.labels("gpu")._value.get() > 0
        log = gpu_front.log_since(mark)
        assert f"was not managed by gpucr" in log and "making the dump GPU-safe (unmanaged_cuda=protect)" in log, log
        assert "locked and checkpointed 1 CUDA process(es)" in log and "restored and unlocked 1" in log, log
        assert fake.state(pid) == "RUNNING" and freezer_state(cgroup) == "THAWED"
        advancing(data)
        try:
            ctrd.ctr("t", "kill", "-s", "KILL", name)
            wait_for(lambda: "RUNNING" not in ctrd.ctr("t", "ls").stdout, what="task to stop")
            ctrd.ctr("t", "rm", name)
            ctrd.ctr("c", "rm", name)
            before = len((data / "log").read_text().split())
            mark = gpu_front.log_mark()
            ctrd.ctr("c", "restore", "--live", "--rw", name, ref)
            wait_for(lambda: len((data / "log").read_text().split()) >= before + 3, what="restored counter")
            after = [int(x) for x in (data / "log").read_text().split()[before:]]
            assert lo <= after[0] - 1 <= hi + 1, (lo, hi, after)
            assert after == list(range(after[0], after[0] + len(after)))
            new = _task_pid(ctrd, name)
            assert new != pid
            assert fake.state(new) == "RUNNING"
            log = gpu_front.log_since(mark)
            assert "request RESTORE" in log and "RESTORE success=True" in log, log
            assert f"restored and unlocked 1 CUDA process(es) [{new}], GPU map identity" in log, log
            assert metrics.ingest() == 1 and metrics.restores.labels("ok", "front")._value.get() == 1
        finally:
            ctrd.ctr("images", "rm", "--sync", ref, check=False)


def test_criu_failure_after_cuda_checkpoint_rolls_back(
        front_containerd: Containerd, gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
        tmp_path: Path) -> None:
    """CRIU itself fails after gpucr checkpointed CUDA (an action script in the container's CRIU config aborts the dump
    at pre-dump): gpucr rolls back at CRIU's answer, so the workload runs on with its CUDA state RUNNING."""
    ctrd = front_containerd
    conf = tmp_path / "fail.conf"
    conf.write_text("action-script /bin/false\n")
    with ctr_workload(ctrd, fake, tmp_path, "--annotation", f"org.criu.config={conf}") as (name, data, cgroup, _d):
        pid = _task_pid(ctrd, name)
        mark = gpu_front.log_mark()
        Metrics(node["state"]).ingest()  # drop earlier tests' events
        metrics = Metrics(node["state"])
        r = ctrd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name, check=False)
        assert r.returncode != 0 and "criu failed" in r.stderr, r.stderr
        assert metrics.ingest() == 1 and metrics.checkpoints.labels("error", "front")._value.get() == 1
        log = gpu_front.log_since(mark)
        assert "locked and checkpointed 1 CUDA process(es)" in log and "DUMP success=False" in log, log
        assert f"failed in CRIU: rolled back 1 CUDA process(es), the workload keeps running" in log, log
        assert fake.state(pid) == "RUNNING" and freezer_state(cgroup) == "THAWED"
        advancing(data)


@pytest.mark.parametrize("kind", ["unmanaged", "managed-gpu-map", "bad-gpu-map"])
def test_runc_checkpoint_and_restore_direct(gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
                                            tmp_path: Path, kind: str) -> None:
    """`runc checkpoint` (cgroup THAWED, no leave-running: the tasks are dumped and killed) and `runc restore -d`
    through the route's runc wrapper. "managed-gpu-map": the container has a state record (as the plugin writes for
    CRI containers) whose gpu-map swaps GPU 0 and GPU 1 (the driver wants a one-to-one map over the node's GPUs); the
    CUDA restore at post-resume applies it. "bad-gpu-map": a map that is not one-to-one fails the restore with a clear
    error, and the restored processes (their CUDA state unusable) are killed, not left locked."""
    name, data, cgroup, bundle = _bundle(tmp_path, "gf-runc")
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["args"] = COUNTER
    spec["process"]["env"] += [f"{k}={v}" for k, v in fake_env(fake).items()]
    spec["mounts"].append({"destination": FAKE_MNT, "type": "bind", "source": str(fake.lib.parent),
                           "options": ["rbind", "rw"]})
    rdev = os.stat(fake.device).st_rdev
    major, minor = os.major(rdev), os.minor(rdev)
    spec["linux"].setdefault("devices", []).append({"path": GPU_DEV, "type": "b", "major": major, "minor": minor,
                                                    "fileMode": 0o600, "uid": 0, "gid": 0})
    spec["linux"].setdefault("resources", {}).setdefault("devices", []).append(
        {"allow": True, "type": "b", "major": major, "minor": minor, "access": "rw"})
    (bundle / "config.json").write_text(json.dumps(spec))
    runc = [str(gpu_front.runc), "--root", str(tmp_path / "runc-root")]
    images, work = tmp_path / "images", tmp_path / "work"

    def run(*args: str) -> None:
        r = subprocess.run([*runc, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        logs = [p.read_text()[-1500:] for p in (work / "dump.log", work / "restore.log") if p.exists()]
        assert r.returncode == 0, (args, r.stderr, logs)

    with _subreaper(cgroup) as inits:
        try:
            subprocess.run([*runc, "run", "-d", "--bundle", str(bundle), name], check=True, timeout=60,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            pid = _runc_pid(runc, name)
            inits.append(pid)
            jail = cgroups.of_pid(pid)
            assert jail.path == cgroups.at(cgroup).path and pid in jail.pids()
            wait_for(lambda: _n(data) >= 2, what="runc counter")
            cuda_running(fake, pid)
            if kind != "unmanaged":
                pairs = [[GPU0, GPU1], [GPU1, GPU0]] if kind == "managed-gpu-map" else [[GPU0, GPU1]]
                write_record(node["state"], ContainerRecord(
                    name, "runc-test", "pod", "pod", "default", True, "test record",
                    policy=RecordedPolicy(2000, tuple((a, b) for a, b in pairs))))
            mark = gpu_front.log_mark()
            lo = _n(data)
            run("checkpoint", "--image-path", str(images), "--work-path", str(work), name)
            hi = _n(data)
            log = gpu_front.log_since(mark)
            assert "locked and checkpointed 1 CUDA process(es)" in log and "thawed it" not in log, log
            assert (", managed (test record)" in log) == (kind != "unmanaged"), log
            assert "the dumped tasks were stopped (no leave-running)" in log, log
            assert _marker(images)["processes"][0]["pid"] == pid
            before = len((data / "log").read_text().split())
            if kind == "bad-gpu-map":
                r = subprocess.run([*runc, "restore", "-d", "--image-path", str(images), "--work-path", str(work),
                                    "--bundle", str(bundle), name], capture_output=True, text=True, timeout=60,
                                   stdin=subprocess.DEVNULL)
                assert r.returncode != 0
                log = gpu_front.log_since(mark)
                assert f"CUDA restore of container {name} (pid " in log and "failed at step compatibility" in log, log
                assert "must be one-to-one" in log and "fix: fix the container's gpucr.io/gpu-map" in log, log
                assert "were killed (their CUDA state is unusable)" in log, log
                # the container's cgroup (shown to hold the workload before the checkpoint): empty or removed
                wait_for(lambda: not jail.path.exists() or not jail.pids(), what="the restored tree to be gone")
                return
            run("restore", "-d", "--image-path", str(images), "--work-path", str(work), "--bundle", str(bundle),
                name)
            new = _runc_pid(runc, name)
            inits.append(new)
            wait_for(lambda: len((data / "log").read_text().split()) >= before + 3, what="restored runc counter")
            after = [int(x) for x in (data / "log").read_text().split()[before:]]
            assert lo <= after[0] - 1 <= hi + 1, (lo, hi, after)
            assert fake.state(new) == "RUNNING"
            log = gpu_front.log_since(mark)
            assert f"restored and unlocked 1 CUDA process(es) [{new}]" in log, log
            gpu = fake.gpu(new)
            if kind == "managed-gpu-map":
                assert f"GPU map {{'{GPU0}': '{GPU1}', '{GPU1}': '{GPU0}'}} (record of container {name})" in log, log
                assert gpu == GPU1
            else:
                assert "GPU map identity (default)" in log and gpu == GPU0, log
        finally:
            remove_record(node["state"], name)
            subprocess.run([*runc, "kill", "--all", name, "KILL"], capture_output=True)
            time.sleep(0.3)
            subprocess.run([*runc, "delete", "-f", name], capture_output=True)


@pytest.mark.parametrize("images_only", [False, True], ids=["default", "images-only"])
def test_gpucr_checkpoint_via_runtime(front_containerd: Containerd, plugin: subprocess.Popen[bytes],
                                      gpu_front: FrontRoute, node: dict[str, Path], fake: FakeCuda,
                                      tmp_path: Path, images_only: bool) -> None:
    """`gpucr checkpoint CONTAINER --via-runtime`: CRI CheckpointContainer on 2.1.9, the task API on 1.7.24 (which
    reaches runc with the container running) and, with --images-only, on 2.1.9 too (CRIU's images written once,
    into DIR); the front does the CUDA work, as for every other caller."""
    ctrd = front_containerd
    with cri_workload(ctrd, fake, tmp_path) as (_c, w):
        out = tmp_path / "ckpt"
        mark = gpu_front.log_mark()
        r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", w.cid[:12], "--via-runtime",
                            *(["--images-only"] if images_only else []),
                            "--leave-running", "--to", str(out), "--json", "--address", ctrd.address, "--libcuda",
                            str(fake.lib)], capture_output=True, text=True, cwd=REPO, timeout=120,
                           env={**os.environ, **node_config(tmp_path)})
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["container_id"] == w.cid and [p["pid"] for p in summary["cuda_processes"]] == [w.pid]
        assert summary["timings_s"]["sync"] >= 0  # containerd's output fsynced before the summary
        cri = ctrd.major_minor >= (2, 0) and not images_only
        if cri:
            assert summary["via"] == "cri CheckpointContainer" and (out / "checkpoint.tar").exists()
        else:
            assert summary["via"] == "containerd task Checkpoint" and (out / "images" / MARKER).exists()
            assert not (out / "checkpoint.tar").exists()
            assert json.loads((out / "gpucr.json").read_text())["kind"] == "runtime"
        log = gpu_front.log_since(mark)
        assert "locked and checkpointed 1 CUDA process(es)" in log and "restored and unlocked 1" in log, log
        # CRI pauses (the front thaws and re-freezes); the task API arrives running
        assert ("thawed it, " in log) == cri, log
        assert fake.state(w.pid) == "RUNNING" and freezer_state(w.cgroup) == "THAWED"
        advancing(w.data)


@pytest.mark.parametrize("images_only", [False, True], ids=["default", "images-only"])
def test_gpucr_checkpoint_via_runtime_without_leave_running(front_containerd: Containerd,
                                                            plugin: subprocess.Popen[bytes], gpu_front: FrontRoute,
                                                            node: dict[str, Path], fake: FakeCuda, tmp_path: Path,
                                                            images_only: bool) -> None:
    """`gpucr checkpoint CONTAINER --via-runtime` without --leave-running. Through the task API (1.7.24; 2.1.9 with
    --images-only) CRIU stops the container after the dump, and the command returns only once containerd has it
    stopped: CRI says exited at once and a stop and removal right after succeed (on 1.7 a stop in the moment before
    containerd saw the exit failed with "ttrpc: closed"). Through CRI on 2.1.9 the container runs on, and the summary
    says so either way (``left_running``)."""
    ctrd = front_containerd
    task_api = ctrd.major_minor < (2, 0) or images_only
    with cri_workload(ctrd, fake, tmp_path) as (c, w):
        out = tmp_path / "ckpt"
        r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", w.cid, "--via-runtime",
                            *(["--images-only"] if images_only else []), "--to", str(out), "--address",
                            ctrd.address, "--libcuda", str(fake.lib)], capture_output=True, text=True, cwd=REPO,
                           timeout=120, env={**os.environ, **node_config(tmp_path)})
        assert r.returncode == 0, r.stderr
        state = c.container_status(w.cid)[0].state  # right when the command returned
        if task_api:
            assert r.stdout.rstrip().endswith("; the container is stopped"), r.stdout
            assert state == 2, f"CRI state {state} (2 = exited) when the checkpoint was reported done"
            c.stop_container(w.cid, 0)
            c.remove_container(w.cid)
            assert not Path(f"/proc/{w.pid}").exists()
            for via_cri in (True, False):  # gone from CRI and from the task API: stopped, no waiting
                assert await_stopped(ctrd.address, w.cid, w.pid, via_cri=via_cri, timeout_s=0)
        else:
            assert "the container keeps running (CRI's checkpoint always leaves it running" in r.stdout, r.stdout
            assert state == 1 and fake.state(w.pid) == "RUNNING"
            advancing(w.data)
            for via_cri in (True, False):  # running in both views: the wait gives up at its deadline
                t0 = time.monotonic()
                assert not await_stopped(ctrd.address, w.cid, w.pid, via_cri=via_cri, timeout_s=0.3)
                assert 0.3 <= time.monotonic() - t0 < 5
    out2 = tmp_path / "ckpt2"
    (tmp_path / "again").mkdir()
    with cri_workload(ctrd, fake, tmp_path / "again") as (c, w):
        r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", w.cid, "--via-runtime",
                            *(["--images-only"] if images_only else []), "--to", str(out2), "--json", "--address",
                            ctrd.address, "--libcuda", str(fake.lib)], capture_output=True, text=True, cwd=REPO,
                           timeout=120, env={**os.environ, **node_config(tmp_path)})
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["left_running"] is not task_api, summary
        assert (c.container_status(w.cid)[0].state == 2) is task_api


def test_managed_cri_container_ctr_checkpoint_kill_and_restore(
        front_containerd: Containerd, plugin: subprocess.Popen[bytes], gpu_front: FrontRoute,
        node: dict[str, Path], fake: FakeCuda, tmp_path: Path) -> None:
    """The issue's full story on a managed CRI container: `ctr c checkpoint --task` while it runs, the container
    killed (CRI StopContainer), `ctr c restore` under a new id: the counter continues from its checkpointed value,
    the restored pid's CUDA state is RUNNING, and the front says what it did at both ends. The restore reads the
    container's gpucr CRIU config again (kept after the container stopped: auto external mounts need
    ext-mount-map auto on restore)."""
    ctrd = front_containerd
    ref = f"localhost/gf-{uuid.uuid4().hex[:6]}:ckpt"
    restored = f"gf-restored-{uuid.uuid4().hex[:6]}"
    with cri_workload(ctrd, fake, tmp_path) as (c, w):
        lo = _n(w.data)  # the container runs on after the checkpoint: its dumped value lies in [lo, hi]
        ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", w.cid, ref, namespace="k8s.io")
        hi = _n(w.data)
        c.stop_container(w.cid, 0)
        before = len((w.data / "log").read_text().split())
        mark = gpu_front.log_mark()
        try:
            ctrd.ctr("c", "restore", "--live", "--rw", restored, ref, namespace="k8s.io")
            wait_for(lambda: len((w.data / "log").read_text().split()) >= before + 3, what="restored counter")
            after = [int(x) for x in (w.data / "log").read_text().split()[before:]]
            assert lo - 1 <= after[0] - 1 <= hi, (lo, hi, after)  # -1: a write the dump cut short is redone
            assert after == list(range(after[0], after[0] + len(after)))
            new = _task_pid(ctrd, restored, "k8s.io")
            assert new != w.pid and fake.state(new) == "RUNNING"
            log = gpu_front.log_since(mark)
            assert "RESTORE success=True" in log and f"restored and unlocked 1 CUDA process(es) [{new}]" in log, log
        finally:
            ctrd.remove_restored(restored, ref, namespace="k8s.io")

