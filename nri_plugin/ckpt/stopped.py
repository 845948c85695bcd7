"""After a checkpoint that stops its container (no leave-running): wait until containerd has it stopped.

CRIU kills the dumped tasks; containerd learns it from the shim's exit event a moment later. Until then CRI still
calls the container running, and on containerd 1.7 a StopContainer in that moment meets the shim going away and fails
with "ttrpc: closed" (a stop right after the checkpoint: ``tests/front/test_restore_named.py``). So a checkpoint that
stops its container is reported done only once containerd has it stopped, whichever path dumped it (gpucr's own
engine, or containerd's task API: :mod:`.via_runtime`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .._grpc import RpcCallError

__all__ = ["STOP_WAIT_S", "await_stopped"]

log = logging.getLogger(__name__)

#: how long to wait for containerd to have the container stopped (CRIU has killed its tasks already)
STOP_WAIT_S = 30.0


def _probe(address: str, container_id: str, namespace: str, via_cri: bool) -> tuple[Any, Callable[[], bool]]:
    """One client (a context manager) and a probe through it: whether containerd has the container stopped (or
    already gone), in CRI's view for a CRI container (what crictl and the kubelet act on), else the task API's."""
    if via_cri:
        from ..cri import CriClient
        from ..cri._pb import api_pb2 as cri_pb
        c = CriClient(address, timeout_s=10)
        return c, lambda: c.container_status(container_id)[0].state != cri_pb.CONTAINER_RUNNING
    from ..containerd import TaskClient
    tc = TaskClient(address, namespace, timeout_s=10)
    return tc, lambda: tc.get(container_id).status == "stopped"


def await_stopped(address: str, container_id: str, pid: int, *, namespace: str = "k8s.io", via_cri: bool = True,
                  timeout_s: float = STOP_WAIT_S) -> bool:
    """Wait until containerd at ``address`` has the container stopped; False, with a warning, if it still calls it
    running after ``timeout_s`` (the checkpoint itself is complete either way, so this is no error)."""
    import grpc

    deadline = time.monotonic() + timeout_s
    client, stopped = _probe(address, container_id, namespace, via_cri)
    with client:
        while True:
            try:
                if stopped():
                    return True
            except RpcCallError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    return True
                # containerd unreachable for a moment: the deadline decides
                log.debug("container %s: asking containerd whether it stopped: %s", container_id, exc)
            if time.monotonic() >= deadline:
                log.warning("container %s (pid %d): checkpointed and its tasks killed, but containerd still reports "
                            "it running after %.0f s; a stop or removal right now may fail: retry it", container_id,
                            pid, timeout_s)
                return False
            time.sleep(0.05)
