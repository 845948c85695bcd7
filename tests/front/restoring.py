"""The restore-into-a-new-pod check the ``gpucr.io/restore-from`` tests share (tests/front/test_restore_*.py,
tests/handlers/test_oci_transfer_ctr.py): a new pod's container naming the checkpoint comes up restored (its
counter goes on from the checkpointed value, consecutively), CRI lists it running under a new pid the fake driver
has RUNNING, exec works, and it stops and is removed like any other container.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_plugin.cri import CriClient, CriError, container_config
from nri_plugin.cri._pb import api_pb2 as pb
from tests.fakes.cuda import FakeCuda
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import COUNTER, FAKE_MNT, GPU_DEV, cuda_running, fake_env
from tests.testenv import Containerd, wait_for


def lines(data: Path) -> list[int]:
    """The counter's values in the volume ``data`` (one per line)."""
    return [int(x) for x in (data / "log").read_text().split()] if (data / "log").exists() else []


def counter_config(fake: FakeCuda, data: Path | None, name: str, ann: dict[str, str], image: str = "",
                   env: dict[str, str] | None = None) -> Any:
    """The fake CUDA counter with its own PID namespace (the kubelet's default; a container in the pod's shared
    PID namespace restores only while its old pids are free there)."""
    conf = container_config(name, image, command=COUNTER, env={**fake_env(fake), **(env or {})},
                            mounts=([(str(data), "/data", False)] if data else [])
                            + [(str(fake.lib.parent), FAKE_MNT, False)],
                            devices=[(str(fake.device), GPU_DEV, "rw")], annotations=ann)
    conf.linux.security_context.namespace_options.pid = pb.CONTAINER
    return conf


def restore_config(fake: FakeCuda, data: Path, name: str, **ann: str) -> Any:
    """:func:`counter_config` naming ``restore_from`` (and ``visible``: the GPUs the new container is given)."""
    env = {"NVIDIA_VISIBLE_DEVICES": ann.pop("visible")} if "visible" in ann else {}
    return counter_config(fake, data, name, {"gpucr.io/restore-from": ann.pop("restore_from"), **ann}, env=env)


@contextlib.contextmanager
def cuda_counter_pod(ctrd: Containerd, fake: FakeCuda, data: Path) -> Iterator[tuple[CriClient, str, int]]:
    """A pod opted in to checkpoints (``gpucr.io/checkpoint: enabled``) whose fake CUDA counter (volume ``data``) is
    RUNNING in the driver and counting: the CRI client, the container's id and pid; the pod removed afterwards."""
    with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        cid, pid = start_cuda(c, pod_id, cfg, counter_config(fake, data, "cuda", {}, ctrd.image), fake)
        wait_for(lambda: _n(data) >= 2, what="CRI counter to start")
        yield c, cid, pid


def start_cuda(c: CriClient, pod_id: str, pod_cfg: Any, conf: Any, fake: FakeCuda) -> tuple[str, int]:
    """Create and start the container ``conf`` (a fake CUDA app) in the pod ``pod_id``: its id and pid, once the fake
    driver has that pid RUNNING with its GPU mapped."""
    cid = c.create_container(pod_id, conf, pod_cfg)
    c.start_container(cid)
    pid = int(c.container_status(cid, verbose=True)[1]["info"]["pid"])
    cuda_running(fake, pid)
    return cid, pid


@dataclass
class Restored:
    cid: str
    pid: int
    #: the counter's values written by the restored process
    after: list[int]


def restore_and_check(ctrd: Containerd, fake: FakeCuda, data: Path, name: str, *, lo: int, hi: int,
                      old_pid: int = 0, visible: str = "", pod_annotations: dict[str, str] | None = None,
                      during: Callable[[CriClient, str, int], None] | None = None,
                      explain: Callable[[CriError, str], str] | None = None) -> Restored:
    """Restore checkpoint ``name`` into a new pod's counter container (volume ``data``) and check it as the module
    docstring says: its first value lies in ``lo .. hi + 1`` (the values around the dump). ``during(client, cid,
    pid)`` runs its own checks while it runs; ``explain(exc, cid)`` words a failed start (CRIU's errors)."""
    before = len(lines(data))
    with ctrd.pod(annotations=pod_annotations or {}) as (c, pod_id, cfg):
        conf = restore_config(fake, data, "restored", restore_from=name, **({"visible": visible} if visible else {}))
        conf.image.image = ctrd.image
        cid = c.create_container(pod_id, conf, cfg)
        try:
            c.start_container(cid)
        except CriError as exc:
            raise AssertionError(explain(exc, cid) if explain else str(exc)) from exc
        wait_for(lambda: len(lines(data)) >= before + 3, what="the restored counter", timeout=30)
        after = lines(data)[before:]
        assert lo - 1 <= after[0] - 1 <= hi, (lo, hi, after, ctrd.log_tail(40))
        assert after == list(range(after[0], after[0] + len(after))), after
        st, info = c.container_status(cid, verbose=True)
        assert st.state == 1, st  # CONTAINER_RUNNING
        pid = int(info["info"]["pid"])
        assert pid != old_pid and fake.state(pid) == "RUNNING", (pid, old_pid)
        if during is not None:
            during(c, cid, pid)
        r = c.exec_sync(cid, ["/bin/sh", "-c", "echo alive"])
        assert r.exit_code == 0 and r.stdout.strip() == b"alive", r
        assert cid in [x.id for x in c.list_containers(pod_id)]
        c.stop_container(cid, 0)
        assert c.container_status(cid)[0].state == 2  # CONTAINER_EXITED
        c.remove_container(cid)
        assert cid not in [x.id for x in c.list_containers(pod_id)]
    return Restored(cid, pid, after)
