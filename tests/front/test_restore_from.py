"""``gpucr.io/restore-from``: a CRI container created in a NEW pod comes up as the restored process tree of a
checkpoint under the node's checkpoint root (containerd 1.7.24 and 2.1.9, runc, CRIU 4.2.x, the fake CUDA driver).

containerd runs the route's ``bin/runc`` wrapper as its runtime binary (``GPUCR_RUNC_DIR``), as ``install/front.sh
install`` sets BinaryName on a node; the plugin checks the checkpoint at CreateContainer and the wrapper turns the
container's ``runc create`` into ``runc restore``. The checkpoint is made with ``gpucr checkpoint --via-runtime``
(CRI CheckpointContainer on 2.1.9, the task API on 1.7.24: the kubelet's and ctr's paths through the front).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cri import CriError
from nri_plugin.handlers import nri_restore
from tests.conftest import VERSIONS
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute, private_containerd
from tests.front.restoring import counter_config as _container
from tests.front.restoring import lines as _lines
from tests.front.restoring import restore_and_check
from tests.front.restoring import restore_config as _restore_config
from tests.front.restoring import cuda_counter_pod
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import (  # noqa: F401  (fixtures)
    GPU0, GPU1, fake, gpu_front, gpu_node,
)
from tests.testenv import REPO, TEST_ROOT, Containerd, running_plugin, wait_for

pytestmark = pytest.mark.integration

INSTANCE = f"{os.environ.get('GPUCR_INSTANCE') or 'default'}-rs"


@pytest.fixture(scope="module")
def node(fake: FakeCuda) -> Iterator[dict[str, Path]]:
    """The node (hook, config, state, CRIU config dirs and the checkpoint root), root's alone."""
    d = TEST_ROOT / f"restore-node-{INSTANCE}"
    with gpu_node(d, fake, checkpoint_root=str(d / "checkpoints")) as paths:
        paths["root"] = d / "checkpoints"
        paths["root"].mkdir(mode=0o700)
        paths["delay"] = d / "test-delay"
        yield paths


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"containerd-{v}" for v in VERSIONS])
def ctrd(request: pytest.FixtureRequest, front_route: FrontRoute) -> Iterator[Containerd]:
    """A private containerd whose runtime binary is gpucr's runc wrapper (the route's bin/runc)."""
    with private_containerd(request.param, {"GPUCR_INSTANCE": INSTANCE, "GPUCR_CRIU_DIR": str(front_route.criu.parent),
                                            "GPUCR_RUNC_DIR": str(front_route.runc.parent)}) as c:
        yield c


@pytest.fixture(scope="module")
def plugin(ctrd: Containerd, node: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    node["delay"].unlink(missing_ok=True)
    with running_plugin(ctrd.nri_socket, node["log"], node["config"],
                        env={**os.environ, nri_restore.TEST_DELAY_ENV: str(node["delay"])}) as proc:
        yield proc


@pytest.fixture(scope="module")
def checkpoint(ctrd: Containerd, plugin: Any, front_route: FrontRoute, node: dict[str, Path], fake: FakeCuda,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A managed fake-CUDA CRI container checkpointed with `gpucr checkpoint --via-runtime` into ROOT/ck1 (sealed:
    gpucr.json with a manifest), then stopped and removed with its pod: only the checkpoint and its data stay."""
    tmp = tmp_path_factory.mktemp("restore-src")
    data = tmp / "data"
    data.mkdir()
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with cuda_counter_pod(ctrd, fake, data) as (c, cid, pid):
            lo = _n(data)
            r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--via-runtime",
                                "--leave-running", "--to", str(node["root"] / "ck1"), "--json", "--address",
                                ctrd.address, "--libcuda", str(fake.lib), "--config", str(node["config"])],
                               capture_output=True, text=True, cwd=REPO, timeout=120)
            assert r.returncode == 0, r.stderr
            hi = _n(data)
            # the dump's CRIU options for the restore: known through the task API (1.7: gpucr's file_locks and the
            # container's CRIU config), containerd's own through CRI (2.x: none recorded, the restore's defaults)
            meta = json.loads((node["root"] / "ck1" / "gpucr.json").read_text())
            if ctrd.major_minor[0] >= 2:
                assert "criu_dump" not in meta, meta
            else:
                assert meta["criu_dump"] == {"tcp_established": False, "ext_unix_sk": False, "file_locks": True,
                                             "shell_job": False}, meta
            c.stop_container(cid, 0)
        try:
            yield {"name": "ck1", "path": node["root"] / "ck1", "data": data, "lo": lo, "hi": hi, "pid": pid}
        finally:  # the node outlives this containerd version: the next version checkpoints into ROOT/ck1 afresh
            shutil.rmtree(node["root"] / "ck1", ignore_errors=True)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("visible", ["", GPU1])
def test_restore_into_new_pod(ctrd: Containerd, plugin: Any, front_route: FrontRoute, node: dict[str, Path],
                              fake: FakeCuda, checkpoint: dict[str, Any], tmp_path: Path, visible: str) -> None:
    """The checkpoint restored into a new pod through the annotation, with its volume at another host path: the
    counter continues from its checkpointed value, the fake driver reports the restored pid RUNNING (on GPU1 when
    the new container is assigned GPU1: the plugin's map GPU0->GPU1 reached the driver), CRI lists the container
    as running, exec works, and it stops and is removed like any other; the checkpoint is unchanged."""
    data = tmp_path / "data2"  # another host path for the same volume
    shutil.copytree(checkpoint["data"], data)
    digest = _digest(checkpoint["path"])
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        mark = front_route.log_mark()

        def on_gpu(c: Any, cid: str, pid: int) -> None:
            log = front_route.log_since(mark)
            assert fake.gpu(pid) == (GPU1 if visible else GPU0), log[-3000:]
            assert "RESTORE success=True" in log and f"restored and unlocked 1 CUDA process(es) [{pid}]" in log, log
            plog = node["log"].read_text()
            assert "will be restored from checkpoint 'ck1'" in plog
            assert f"/data: {checkpoint['data']} -> {data}" in plog, plog

        def explain(exc: CriError, cid: str) -> str:
            rl = node["root"] / ".restore" / cid / "work" / "restore.log"
            errs = [ln for ln in rl.read_text().splitlines() if "Error (" in ln] if rl.exists() else []
            return f"{exc}\n" + "\n".join(errs[-20:]) + f"\n{front_route.log_since(mark)[-3000:]}"

        cid = restore_and_check(ctrd, fake, data, checkpoint["name"], lo=checkpoint["lo"], hi=checkpoint["hi"],
                                old_pid=checkpoint["pid"], visible=visible,
                                pod_annotations={"gpucr.io/checkpoint": "enabled"}, during=on_gpu,
                                explain=explain).cid
    assert not (node["root"] / ".restore" / cid).exists()
    assert not list((node["root"] / ".restore-locks").glob("*.lock"))
    assert _digest(checkpoint["path"]) == digest


def _refused(ctrd: Containerd, fake: FakeCuda, tmp_path: Path, name: str, **ann: str) -> str:
    data = tmp_path / "d"
    data.mkdir(exist_ok=True)
    with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        conf = _restore_config(fake, data, "bad", restore_from=name, **ann)
        conf.image.image = ctrd.image
        with pytest.raises(CriError) as ei:
            c.create_container(pod_id, conf, cfg)
        assert not c.list_containers(pod_id)  # nothing half-created
    return str(ei.value)


@pytest.mark.parametrize("case", ["dotdot", "nothing", "symlink-out", "no-metadata", "truncated",
                                  "missing-volume"])
def test_restore_bad_input_fails_creation(ctrd: Containerd, plugin: Any, node: dict[str, Path], fake: FakeCuda,
                                          checkpoint: dict[str, Any], tmp_path: Path, case: str) -> None:
    """Each bad restore-from that is cheap to see (everything but a changed byte whose sealing time was put back:
    the digests are the wrapper's, see test_tampered_checkpoint_is_refused) fails CreateContainer with one clear error; no container, no staging,
    no lock; the original checkpoint is untouched."""
    root: Path = node["root"]
    digest = _digest(checkpoint["path"])
    name, expect, extra = "", "", {}
    if case == "dotdot":
        name, expect = "../etc", "no '..'"
    elif case == "nothing":
        name, expect = "nope", "no checkpoint 'nope' under the checkpoint root"
    elif case == "symlink-out":
        out = tmp_path / "outside"
        shutil.copytree(checkpoint["path"], out)
        (root / "evil").symlink_to(out)
        name, expect = "evil", "is outside the checkpoint root"
    elif case == "no-metadata":
        shutil.copytree(checkpoint["path"], root / "plain")
        (root / "plain" / "gpucr.json").unlink()
        name, expect = "plain", "has no gpucr metadata (gpucr.json)"
    else:
        shutil.copytree(checkpoint["path"], root / case)
        name = case
        big = max((p for p in (root / case).rglob("*") if p.is_file() and p.name != "gpucr.json"),
                  key=lambda p: p.stat().st_size)
        if case == "truncated":
            os.truncate(big, big.stat().st_size // 2)
            expect = "(truncated or changed)"
        else:
            extra = {}
            expect = "the checkpoint has a volume at /data"
    try:
        if case == "missing-volume":
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                conf = _container(fake, None, "bad", {"gpucr.io/restore-from": name}, ctrd.image)
                with pytest.raises(CriError) as ei:
                    c.create_container(pod_id, conf, cfg)
                assert not c.list_containers(pod_id)
            msg = str(ei.value)
        else:
            msg = _refused(ctrd, fake, tmp_path, name, **extra)
        assert expect in msg and "container bad in pod default/" in msg, msg
    finally:
        for n in ("evil", "plain", "truncated", "missing-volume"):
            p = root / n
            if p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
    assert not any((root / ".restore").glob("*")) if (root / ".restore").exists() else True
    assert not list((node["root"] / ".restore-locks").glob("*.lock")) if (node["root"] / ".restore-locks").exists() \
        else True
    assert _digest(checkpoint["path"]) == digest


def test_two_restores_of_one_checkpoint_at_once(ctrd: Containerd, plugin: Any, node: dict[str, Path],
                                                fake: FakeCuda, checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """A second container naming a checkpoint whose restore is pending (created, not started) is refused, naming
    the first; once the first is removed, the lock is gone."""
    data = tmp_path / "d"
    shutil.copytree(checkpoint["data"], data)
    with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        conf = _restore_config(fake, data, "first", restore_from=checkpoint["name"])
        conf.image.image = ctrd.image
        first = c.create_container(pod_id, conf, cfg)
        conf2 = _restore_config(fake, data, "second", restore_from=checkpoint["name"])
        conf2.image.image = ctrd.image
        with pytest.raises(CriError) as ei:
            c.create_container(pod_id, conf2, cfg)
        assert f"is being restored by container {first} now" in str(ei.value), ei.value
        assert [x.id for x in c.list_containers(pod_id)] == [first]
        c.remove_container(first)
    wait_for(lambda: not list((node["root"] / ".restore-locks").glob("*.lock")), what="the lock to go")
    assert not (node["root"] / ".restore" / first).exists()




def test_ctr_checkpoint_sealed_then_restored_into_new_pod(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                                          node: dict[str, Path], fake: FakeCuda,
                                                          tmp_path: Path) -> None:
    """`ctr t checkpoint --image-path ROOT/NAME/images` of a managed CRI container (through the front), unsealed:
    refused for lack of gpucr metadata; after `gpucr seal ROOT/NAME` it restores into a new pod, counter going on."""
    data = tmp_path / "data"
    data.mkdir()
    name = "ctr-ck"
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib)):
        with cuda_counter_pod(ctrd, fake, data) as (c, cid, pid):
            lo = _n(data)
            (node["root"] / name).mkdir(mode=0o700)
            ctrd.ctr("t", "checkpoint", "--image-path", str(node["root"] / name / "images"), cid, namespace="k8s.io")
            hi = _n(data)
            c.stop_container(cid, 0)
        try:
            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)
            msg = _refused(ctrd, fake, tmp_path, name)
            assert "has no gpucr metadata (gpucr.json)" in msg, msg
            r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "seal", str(node["root"] / name),
                                "--config", str(node["config"]), "--json"], capture_output=True, text=True, cwd=REPO)
            assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "images", r.stderr
            restore_and_check(ctrd, fake, data2, name, lo=lo, hi=hi, old_pid=pid)
        finally:
            shutil.rmtree(node["root"] / name, ignore_errors=True)


def _nri_request_timeout(ctrd: Containerd) -> str:
    """The instance's NRI plugin_request_timeout as its config.toml sets it (install/containerd.sh)."""
    import tomllib
    doc = tomllib.loads((Path(ctrd.info["dir"]) / "config.toml").read_text())
    return str(doc["plugins"]["io.containerd.nri.v1.nri"]["plugin_request_timeout"])


def _gone(node: dict[str, Path], cid: str) -> None:
    """Nothing of a restore left: no staging, no ticket, no lock."""
    wait_for(lambda: not (node["root"] / ".restore" / cid).exists(), what="the staging area to go")
    assert not (node["state"] / "restore" / f"{cid}.json").exists()
    assert not list((node["state"] / "restore-locks").glob("*.lock"))


def test_slow_staging_with_the_default_nri_timeout(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                                   node: dict[str, Path], fake: FakeCuda,
                                                   checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """The H200 bug's shape (bench/results/gpu_restore.md: staging 4.7 s inside CreateContainer, containerd's NRI
    timeout 2 s, the container started fresh): with containerd's default timeout and staging made 3 s slower, the
    creation answers at once (the plugin stages nothing) and the container comes up restored."""
    import time
    assert _nri_request_timeout(ctrd) == "2s"
    data = tmp_path / "data2"
    shutil.copytree(checkpoint["data"], data)
    before = len(_lines(data))
    with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                libnvml=str(fake.lib), test_restore_stage_delay_s="3"):
        mark = front_route.log_mark()
        with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
            conf = _restore_config(fake, data, "restored", restore_from=checkpoint["name"])
            conf.image.image = ctrd.image
            t0 = time.monotonic()
            cid = c.create_container(pod_id, conf, cfg)
            created = time.monotonic() - t0
            ticket = nri_restore.load_ticket(node["state"], cid)
            assert ticket is not None and ticket.state == nri_restore.READY, ticket
            assert not (node["root"] / ".restore" / cid).exists()  # nothing staged by the plugin
            t0 = time.monotonic()
            c.start_container(cid)
            started = time.monotonic() - t0
            assert created < 2.0 <= 3.0 <= started, (created, started)
            wait_for(lambda: len(_lines(data)) >= before + 3, what="the restored counter", timeout=30)
            after = _lines(data)[before:]
            assert checkpoint["lo"] - 1 <= after[0] - 1 <= checkpoint["hi"], (checkpoint, after)
            pid = int(c.container_status(cid, verbose=True)[1]["info"]["pid"])
            assert fake.state(pid) == "RUNNING"
            assert "RESTORE success=True" in front_route.log_since(mark)
            c.stop_container(cid, 0)
            c.remove_container(cid)
    _gone(node, cid)


@pytest.mark.parametrize("keep_time", [False, True], ids=["changed", "changed-time-put-back"])
def test_tampered_checkpoint_is_refused(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                       node: dict[str, Path], fake: FakeCuda, checkpoint: dict[str, Any],
                                       tmp_path: Path, keep_time: bool) -> None:
    """A byte changed in the checkpoint (same size). Its new modification time differs from the one sealed in the
    manifest: CreateContainer refuses it at once, no container. With the sealing time put back (only a deliberate
    forgery does that) CreateContainer's bounded check accepts it and the wrapper's digests at runc create refuse
    it with one clear error. Either way nothing runs, nothing is left, the checkpoint is untouched."""
    root: Path = node["root"]
    shutil.copytree(checkpoint["path"], root / "tampered")
    big = max((p for p in (root / "tampered").rglob("*") if p.is_file() and p.name != "gpucr.json"),
              key=lambda p: p.stat().st_size)
    sealed = big.stat().st_mtime_ns
    b = bytearray(big.read_bytes())
    b[len(b) // 2] ^= 0xFF
    big.write_bytes(bytes(b))
    t = sealed if keep_time else sealed + 10**9
    os.utime(big, ns=(t, t))
    digest = _digest(root / "tampered")
    data = tmp_path / "d"
    shutil.copytree(checkpoint["data"], data)
    try:
        with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                    libnvml=str(fake.lib)):
            mark = front_route.log_mark()
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                conf = _restore_config(fake, data, "bad", restore_from="tampered")
                conf.image.image = ctrd.image
                if not keep_time:
                    with pytest.raises(CriError) as ei:
                        c.create_container(pod_id, conf, cfg)
                    msg = str(ei.value)
                    assert "cannot restore from checkpoint 'tampered'" in msg, msg
                    assert f"{big.relative_to(root / 'tampered')} was modified after the checkpoint was sealed" \
                        in msg, msg
                    assert not c.list_containers(pod_id), "a container was created"
                    cid = None
                else:
                    cid = c.create_container(pod_id, conf, cfg)
                    with pytest.raises(CriError) as ei:
                        c.start_container(cid)
                    msg = str(ei.value)
                    assert f"container {cid}: restore from checkpoint 'tampered' refused at step verify" in msg, msg
                    assert "does not match its sha256" in msg, msg
                    assert c.container_status(cid)[0].state != 1  # not RUNNING
                assert "request RESTORE" not in front_route.log_since(mark)  # CRIU never ran
                assert not (root / ".restore").exists() or not list((root / ".restore").iterdir())
                assert not list((node["state"] / "restore-locks").glob("*.lock"))
                if cid is not None:
                    c.remove_container(cid)
        if cid is not None:
            _gone(node, cid)
        assert _digest(root / "tampered") == digest
    finally:
        shutil.rmtree(root / "tampered", ignore_errors=True)


@pytest.mark.parametrize("when", ["pending", "late"])
def test_dropped_plugin_answer_fails_start_not_fresh(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                                     node: dict[str, Path], fake: FakeCuda,
                                                     checkpoint: dict[str, Any], tmp_path: Path, when: str) -> None:
    """The plugin made slower than containerd's default NRI timeout (2 s; a test-only delay after its pending
    ticket): containerd drops its answer and creates the container without gpucr's adjustments. The wrapper sees the
    ticket (``pending``: the plugin still checking at runc create; ``late``: checked, but its answer lost) without
    the plugin's annotation in config.json and fails the start with the reason: the container never runs fresh."""
    assert _nri_request_timeout(ctrd) == "2s"
    data = tmp_path / "d"
    shutil.copytree(checkpoint["data"], data)
    before = len(_lines(data))
    syncs = node["log"].read_text().count("synchronized")
    node["delay"].write_text("6" if when == "pending" else "3")
    try:
        with front_route.configured(hooks="nri_plugin.handlers.front_cuda:make", node_config=str(node["config"]),
                                    libnvml=str(fake.lib)):
            mark = front_route.log_mark()
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                conf = _restore_config(fake, data, "late", restore_from=checkpoint["name"])
                conf.image.image = ctrd.image
                cid = c.create_container(pod_id, conf, cfg)  # containerd gives up on the plugin after 2 s
                node["delay"].unlink()
                ticket = lambda: nri_restore.load_ticket(node["state"], cid)  # noqa: E731
                if when == "late":
                    wait_for(lambda: (t := ticket()) is not None and t.state == nri_restore.READY,
                             what="the plugin to finish its checks", timeout=20)
                else:
                    t = ticket()
                    assert t is not None and t.state == nri_restore.PENDING, t
                with pytest.raises(CriError) as ei:
                    c.start_container(cid)
                msg = str(ei.value)
                why = "had not finished its checks" if when == "pending" else "answered too late"
                assert (f"container {cid} asked for gpucr.io/restore-from 'ck1' but containerd created it without "
                        f"gpucr's adjustments: gpucr's plugin {why}") in msg, msg
                assert "NRI plugin_request_timeout" in msg and "Not starting it fresh" in msg, msg
                assert c.container_status(cid)[0].state != 1  # not RUNNING
                assert len(_lines(data)) == before  # no fresh counter wrote a line
                assert "request RESTORE" not in front_route.log_since(mark)
                # the plugin comes back (containerd closed its connection) and registers again
                wait_for(lambda: node["log"].read_text().count("synchronized") > syncs, timeout=30,
                         what="the plugin to register again")
                c.remove_container(cid)
        wait_for(lambda: not (node["state"] / "restore" / f"{cid}.json").exists(), timeout=15,
                 what="the ticket to go (the plugin's RemoveContainer, or its Synchronize)")
        _gone(node, cid)
    finally:
        node["delay"].unlink(missing_ok=True)

