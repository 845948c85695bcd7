"""What ``gpucr.io/restore-from`` can name beyond the runtime's own checkpoints (containerd 1.7.24 and 2.1.9, runc,
CRIU 4.2.x, the fake CUDA driver): a direct ``gpucr checkpoint CONTAINER --to ROOT/NAME`` (gpucr's own engine, which
dumps the container as runc's checkpoint does), restored into a new pod; and a container in its pod's shared PID
namespace (CRI ``pid: POD``), restored into a new pod's shared namespace five times in a row (the restore once failed
about 1 run in 4 with ``Can't fork for N: File exists``: CRIU's helpers took the checkpoint's pids there).

The node, the containerd whose runtime binary is gpucr's runc wrapper, and the plugin are those of
:mod:`tests.front.test_restore_from`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cri import CriError, pod_config
from nri_plugin.cri._pb import api_pb2 as pb
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import GPU0, fake, gpu_front  # noqa: F401  (fixtures)
from tests.front.restoring import cuda_counter_pod, restore_and_check, start_cuda
from tests.front.test_front_tcp import SERVER_AND_CLIENT, ask, counts, free_port
from tests.front.test_restore_from import (  # noqa: F401  (fixtures)
    _container, _lines, _restore_config, ctrd, node, plugin,
)
from tests.testenv import CRIU, REPO, Containerd, wait_for

pytestmark = pytest.mark.integration

CUDA_HOOKS = "nri_plugin.handlers.front_cuda:make"


def _direct_checkpoint(ctrd: Containerd, node: dict[str, Path], fake: FakeCuda, cid: str, name: str) -> dict[str, Any]:
    """``gpucr checkpoint CID --to ROOT/NAME`` through gpucr's own engine (not --via-runtime), kill mode."""
    r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--to",
                        str(node["root"] / name), "--json", "--address", ctrd.address, "--libcuda", str(fake.lib),
                        "--libnvml", str(fake.lib), "--criu", str(CRIU), "--config", str(node["config"])],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _restore_failed(exc: CriError, node: dict[str, Path], cid: str, front_route: FrontRoute, mark: int) -> str:
    rl = node["root"] / ".restore" / cid / "work" / "restore.log"
    errs = [ln for ln in rl.read_text().splitlines() if "Error (" in ln] if rl.exists() else []
    return f"{exc}\n" + "\n".join(errs[-20:]) + f"\n{front_route.log_since(mark)[-3000:]}"


def test_direct_checkpoint_restored_into_new_pod(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                                 node: dict[str, Path], fake: FakeCuda, tmp_path: Path) -> None:
    """A managed fake-CUDA CRI container checkpointed with `gpucr checkpoint CONTAINER --to ROOT/NAME` (direct):
    the checkpoint is of kind "container" and carries runc's descriptors.json and gpucr's CUDA marker; a new pod's
    container naming it comes up restored: the counter continues from the dumped value, the fake driver has the
    restored pid RUNNING on GPU0 (restored and unlocked by the CRIU front), CRI lists it running, exec works, it
    stops and is removed; the checkpoint itself stays."""
    data = tmp_path / "data"
    data.mkdir()
    name = "direct-ck"
    try:
        with front_route.configured(hooks=CUDA_HOOKS, node_config=str(node["config"]), libnvml=str(fake.lib)):
            with cuda_counter_pod(ctrd, fake, data) as (c, cid, pid):
                s = _direct_checkpoint(ctrd, node, fake, cid, name)
                assert [p["pid"] for p in s["cuda_processes"]] == [pid], s
                at_dump = _n(data)
            ck = node["root"] / name
            meta = json.loads((ck / "gpucr.json").read_text())
            assert meta["kind"] == "container" and meta["container"]["id"] == cid, meta
            assert meta["mounts"]["/data"] == str(data), meta["mounts"]
            desc = json.loads((ck / "images" / "descriptors.json").read_text())
            assert len(desc) == 3 and any(d.startswith("pipe:[") for d in desc), desc
            assert "images/descriptors.json" in meta["manifest"] and "images/gpucr-cuda.json" in meta["manifest"]
            assert meta["criu_dump"] == {"tcp_established": True, "ext_unix_sk": True, "file_locks": True,
                                         "shell_job": True}, meta  # what the wrapper's runc restore passes again
            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)
            mark = front_route.log_mark()

            def on_gpu(c: Any, cid: str, npid: int) -> None:
                log = front_route.log_since(mark)
                assert fake.gpu(npid) == GPU0, log[-3000:]
                assert f"restored and unlocked 1 CUDA process(es) [{npid}]" in log, log[-3000:]

            # the counter goes on from the dumped value exactly (kill mode: nothing ran after the dump)
            new = restore_and_check(ctrd, fake, data2, name, lo=at_dump + 1, hi=at_dump, old_pid=pid,
                                    pod_annotations={"gpucr.io/checkpoint": "enabled"}, during=on_gpu,
                                    explain=lambda exc, cid: _restore_failed(exc, node, cid, front_route, mark)).cid
        assert (ck / "gpucr.json").exists() and not (node["root"] / ".restore" / new).exists()
    finally:
        shutil.rmtree(node["root"] / name, ignore_errors=True)


@contextlib.contextmanager
def _shared_pid_pod(ctrd: Containerd) -> Iterator[tuple[Any, str, Any]]:
    """A pod whose containers share one PID namespace (the sandbox's: CRI pid POD, shareProcessNamespace)."""
    cfg = pod_config(f"p-{uuid.uuid4().hex[:8]}", cgroup_parent=ctrd.cgroup_parent,
                     annotations={"gpucr.io/checkpoint": "enabled"})
    cfg.linux.security_context.namespace_options.pid = pb.POD
    with ctrd.pod_of(cfg) as pod:
        yield pod


def _nspid(pid: int) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return [int(x) for x in next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()[1:]]


def _ns_pids(pod_id: str) -> set[int]:
    """The pids in use in the pod's shared namespace (as the pod sees them), found from its sandbox's process."""
    from nri_plugin.host.proc import cgroup_path, container_id
    procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    sandbox = next(int(p.name) for p in procs if container_id(cgroup_path(int(p.name))) == pod_id)
    ns = Path(f"/proc/{sandbox}/ns/pid").stat().st_ino
    out: set[int] = set()
    for p in procs:
        with contextlib.suppress(OSError, StopIteration):
            if (p / "ns/pid").stat().st_ino == ns:
                out.update(_nspid(int(t.name))[-1] for t in (p / "task").iterdir())
    return out


RUNS = 5


@pytest.mark.parametrize("how", ["direct", "via-runtime"])
def test_shared_pid_namespace_restores_every_time(ctrd: Containerd, plugin: Any, front_route: FrontRoute,
                                                  node: dict[str, Path], fake: FakeCuda, tmp_path: Path,
                                                  how: str) -> None:
    """A fake-CUDA container in its pod's shared PID namespace, checkpointed (directly, or through containerd with
    --via-runtime, leaving it running until its pod goes), restored into a new pod's
    shared PID namespace RUNS times: every restore comes up (at its old pid in the pod's namespace), its counter
    continues and the fake driver has it RUNNING. Then a pod whose other container holds one of those pids: the
    start fails with one error naming the pid and its holder, nothing of the restore left."""
    data = tmp_path / "data"
    data.mkdir()
    name = "shared-pid-ck"
    try:
        with front_route.configured(hooks=CUDA_HOOKS, node_config=str(node["config"]), libnvml=str(fake.lib)):
            with _shared_pid_pod(ctrd) as (c, pod_id, cfg):
                # the rig's pause (a shell whose `sleep` child sits at the first pid after runc init's threads) holds
                # a pid near the bottom of every new pod's namespace: the checkpointed pids are put well above it
                burner = ctrd.run_container(c, pod_id, cfg, "burner", ["/bin/sh", "-c", "for i in $(seq 40); do "
                                                                                         "sleep 0 & done; wait"])
                wait_for(lambda: c.container_status(burner)[0].state == 2, what="the burner to exit")
                conf = _container(fake, data, "cuda", {}, ctrd.image)
                conf.linux.security_context.namespace_options.pid = pb.POD
                cid, pid = start_cuda(c, pod_id, cfg, conf, fake)
                old_nspid = _nspid(pid)[-1]
                assert old_nspid > 40, old_nspid
                wait_for(lambda: _n(data) >= 2, what="CRI counter to start")
                if how == "direct":
                    _direct_checkpoint(ctrd, node, fake, cid, name)
                    assert c.container_status(cid)[0].state == pb.CONTAINER_EXITED  # done once containerd has it so
                else:  # containerd's checkpoint (CRI on 2.x, the task API on 1.7), through the front
                    r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid,
                                        "--via-runtime", "--to", str(node["root"] / name), "--json", "--address",
                                        ctrd.address, "--libcuda", str(fake.lib), "--config", str(node["config"])],
                                       capture_output=True, text=True, cwd=REPO, timeout=120)
                    assert r.returncode == 0, r.stderr
                    # the task API (1.7) stops it and the command returns once containerd has it stopped, so the stop
                    # right after meets a stopped container (ckpt/via_runtime.py); CRI's checkpoint (2.x) leaves it
                    want = pb.CONTAINER_EXITED if ctrd.major_minor < (2, 0) else pb.CONTAINER_RUNNING
                    assert c.container_status(cid)[0].state == want, r.stderr
                    c.stop_container(cid, 0)
                at_dump = _n(data)
            for run in range(RUNS):
                d = tmp_path / f"data-{run}"
                shutil.copytree(data, d)
                before = len(_lines(d))
                mark = front_route.log_mark()
                with _shared_pid_pod(ctrd) as (c, pod_id, cfg):
                    conf = _restore_config(fake, d, "restored", restore_from=name)
                    conf.linux.security_context.namespace_options.pid = pb.POD
                    conf.image.image = ctrd.image
                    new = c.create_container(pod_id, conf, cfg)
                    assert max(_ns_pids(pod_id)) < old_nspid, _ns_pids(pod_id)  # the pause's pids lie below it
                    try:
                        c.start_container(new)
                    except CriError as exc:
                        raise AssertionError(f"run {run + 1} of {RUNS}: "
                                             + _restore_failed(exc, node, new, front_route, mark)) from exc
                    wait_for(lambda: len(_lines(d)) >= before + 3, what=f"run {run + 1}: the restored counter",
                             timeout=30)
                    after = _lines(d)[before:]
                    assert after[0] == at_dump + 1 if how == "direct" else after[0] <= at_dump + 1, \
                        (run, at_dump, after)
                    npid = int(c.container_status(new, verbose=True)[1]["info"]["pid"])
                    assert _nspid(npid)[-1] == old_nspid, (run, _nspid(npid), old_nspid)
                    assert fake.state(npid) == "RUNNING", front_route.log_since(mark)[-3000:]
                    c.stop_container(new, 0)
                    c.remove_container(new)
            # the old pid taken in the new pod by another container: refused at start with the holder named
            with _shared_pid_pod(ctrd) as (c, pod_id, cfg):
                ctrd.run_container(c, pod_id, cfg, "sleepers", ["/bin/sh", "-c", f"for i in $(seq {old_nspid + 5}); "
                                                                "do sleep 300 & done; wait"])
                wait_for(lambda: old_nspid in _ns_pids(pod_id), what=f"pid {old_nspid} taken in the new pod "
                         f"({sorted(_ns_pids(pod_id))})")
                conf = _restore_config(fake, tmp_path / "data-0", "restored", restore_from=name)
                conf.linux.security_context.namespace_options.pid = pb.POD
                conf.image.image = ctrd.image
                with pytest.raises(CriError) as ei:
                    c.create_container(pod_id, conf, cfg)
                msg = str(ei.value)
                assert "are taken in the pod's shared PID namespace (" in msg and f"{old_nspid} by sleep" in msg \
                    and "container restored in pod default/" in msg, msg
                assert [x.metadata.name for x in c.list_containers(pod_id)] == ["sleepers"]  # nothing half-created
        assert not list((node["state"] / "restore-locks").glob("*.lock"))
    finally:
        shutil.rmtree(node["root"] / name, ignore_errors=True)


def test_established_tcp_connection_comes_back_through_the_annotation(ctrd: Containerd, plugin: Any,
                                                                      front_route: FrontRoute, node: dict[str, Path],
                                                                      fake: FakeCuda, tmp_path: Path) -> None:
    """A container talking to itself over an established loopback connection (host network), checkpointed with
    `gpucr checkpoint CONTAINER` (gpucr's dumps use --tcp-established, and gpucr.json records it), restored into a new
    pod whose container asks nothing about TCP (no gpucr.io/tcp-established: the plugin's CRIU config for it has no
    tcp-established line): the wrapper's runc restore passes --tcp-established from the record, so the connection
    comes back and its server's count goes on (a new connection would start at 1); the listener accepts again.
    Without the flag CRIU refuses the restore (``Connected TCP socket in image``)."""
    from nri_plugin.ckpt.criu import Criu
    from nri_plugin.cri import container_config
    from tests.ckpt._tcp import criu_dumps_tcp, kernel_version
    version = Criu(str(CRIU)).version()
    assert criu_dumps_tcp(version), (f"{CRIU} is CRIU {version}, which cannot dump TCP sockets on kernel "
                                     f"{kernel_version()}: run install/deps.sh (it installs CRIU 4.2.x)")
    port, name = free_port(), "tcp-ck"
    data = tmp_path / "data"
    data.mkdir()

    def tcp_container(cname: str, d: Path, ann: dict[str, str]) -> Any:
        conf = container_config(cname, ctrd.image, command=["/bin/sh", "-c", SERVER_AND_CLIENT],
                                env={"PORT": str(port)}, mounts=[(str(d), "/data", False)], annotations=ann)
        conf.linux.security_context.namespace_options.pid = pb.CONTAINER
        return conf

    try:
        with front_route.configured(hooks=CUDA_HOOKS, node_config=str(node["config"]), libnvml=str(fake.lib)):
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                cid = c.create_container(pod_id, tcp_container("tcp", data, {}), cfg)
                c.start_container(cid)
                wait_for(lambda: len(counts(data)) >= 3, what="the in-container client's answers")
                _direct_checkpoint(ctrd, node, fake, cid, name)
                at_dump = counts(data)
                assert at_dump == list(range(1, len(at_dump) + 1)), at_dump  # one connection all along
            meta = json.loads((node["root"] / name / "gpucr.json").read_text())
            assert meta["criu_dump"]["tcp_established"] is True, meta
            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)
            mark = front_route.log_mark()
            with ctrd.pod() as (c, pod_id, cfg):
                conf = tcp_container("restored", data2, {"gpucr.io/restore-from": name})
                new = c.create_container(pod_id, conf, cfg)
                record = json.loads((node["state"] / "containers" / f"{new}.json").read_text())
                assert "tcp-established" not in Path(record["criu_config"]).read_text().split(), record
                try:
                    c.start_container(new)
                except CriError as exc:
                    raise AssertionError(_restore_failed(exc, node, new, front_route, mark)) from exc
                wait_for(lambda: len(counts(data2)) >= len(at_dump) + 3,
                         what="answers over the restored connection")
                after = counts(data2)[len(at_dump):]
                assert at_dump[-1] < after[0] <= at_dump[-1] + 2, (at_dump, after)
                assert after == list(range(after[0], after[0] + len(after))), after
                assert ask(port, "again") == "1 again"  # the restored listening socket accepts
                c.stop_container(new, 0)
                c.remove_container(new)
    finally:
        shutil.rmtree(node["root"] / name, ignore_errors=True)
