"""Which container ``gpucr checkpoint CONTAINER`` means, asked of containerd and nobody else.

A reference resolves only to: an exact container id, an exact unique name, or a unique id prefix of at least
:data:`MIN_PREFIX` characters, among the containers containerd reports through CRI (namespace ``k8s.io``; the name
is the CRI container name) and through its task API in one namespace (``default`` unless ``--namespace``; there the
name is the id, as ``ctr run`` gives it). With ``--namespace`` only the task API of that namespace is asked.

Deliberately not here: any search of ``/proc`` for a cgroup path that "looks like" the reference. That fallback once
resolved ``s``, ``0`` and ``/`` to pid 1; a container that containerd does not know is not gpucr's to touch (use
``--pid``). Every error of the runtime (unreachable socket, permission, a timeout) is reported, never taken for "not
found", except CRI answering UNIMPLEMENTED (a containerd without its CRI plugin), where the task API alone decides.
The pid containerd names is checked once more against ``/proc``: its cgroup must be the container's
(:func:`nri_plugin.host.proc.container_id`), so a pid reused since containerd answered is refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import grpc

from ..errors import GpucrError

__all__ = [
    "MIN_PREFIX", "AmbiguousContainerError", "ContainerRefError", "Resolved", "RuntimeQueryError", "resolve_container",
]

log = logging.getLogger(__name__)

#: shortest id prefix accepted (shorter references match only a whole id or name)
MIN_PREFIX = 4
#: what a containerd id or CRI name can look like (containerd's identifiers: letters, digits, ``._-``)
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,253}\Z")
DEFAULT_TASK_NAMESPACE = "default"


class ContainerRefError(GpucrError):
    """A container reference is malformed, matches nothing, or names a container that does not run."""


class RuntimeQueryError(ContainerRefError):
    """containerd could not be asked (unreachable socket, permission, timeout): never taken for "not found"."""


class AmbiguousContainerError(ContainerRefError):
    """A reference matches more than one container."""


@dataclass(frozen=True)
class Resolved:
    """The container a reference names: its id, the host pid of its init, its name, and who reported it."""

    id: str
    pid: int
    name: str
    namespace: str          # "k8s.io" for CRI containers
    via_cri: bool
    pod_sandbox: str = ""   # CRI: the id of the container's pod sandbox


@dataclass(frozen=True)
class _Candidate:
    id: str
    name: str
    namespace: str
    via_cri: bool
    pid: int = 0            # task API: known from List; CRI: asked with ContainerStatus once chosen
    state: str = ""
    pod_sandbox: str = ""


def _cri_candidates(address: str, timeout_s: float) -> list[_Candidate] | None:
    """Every CRI container, or None when containerd has no CRI (UNIMPLEMENTED). Raises CriError otherwise."""
    from ..cri import CriClient, CriError
    from ..cri.client import state_name

    try:
        with CriClient(address, timeout_s=timeout_s) as c:
            return [_Candidate(ct.id, ct.metadata.name, "k8s.io", True, state=state_name(ct.state),
                               pod_sandbox=ct.pod_sandbox_id)
                    for ct in c.list_containers()]
    except CriError as exc:
        if exc.code == grpc.StatusCode.UNIMPLEMENTED:
            log.info("no CRI at %s (UNIMPLEMENTED): resolving through the task API only", address)
            return None
        raise


def _task_candidates(address: str, namespace: str, timeout_s: float) -> list[_Candidate]:
    from ..containerd import TaskClient

    with TaskClient(address, namespace, timeout_s=timeout_s) as t:
        return [_Candidate(x.container_id, x.container_id, namespace, False, x.pid, x.status) for x in t.list()]


def _match(ref: str, cands: list[_Candidate]) -> list[_Candidate]:
    """Exact id, else exact name, else id prefix (long enough); one candidate per id."""
    for rule in (lambda c: c.id == ref, lambda c: c.name == ref,
                 lambda c: len(ref) >= MIN_PREFIX and c.id.startswith(ref)):
        hits = {(c.namespace, c.id): c for c in cands if rule(c)}
        if hits:
            return list(hits.values())
    return []


def _cri_pid(address: str, cid: str, timeout_s: float) -> int:
    from ..cri import CriClient

    with CriClient(address, timeout_s=timeout_s) as c:
        _, info = c.container_status(cid, verbose=True)
    return int((info.get("info") or info).get("pid") or 0)


def _check_pid(pid: int, cand: _Candidate) -> None:
    from ..host.proc import cgroup_path, container_id

    path = cgroup_path(pid)
    if container_id(path) != cand.id:
        raise ContainerRefError(f"container {cand.id}: containerd names pid {pid}, but that process's cgroup is "
                                f"{path or '(gone)'}, not the container's (it exited or the pid was reused); "
                                f"check that the container runs and retry")


def resolve_container(ref: str, address: str, namespace: str | None = None, *, timeout_s: float = 10.0) -> Resolved:
    """The running container ``ref`` names, through containerd at ``address``.

    Args:
        namespace: ask only containerd's task API in this namespace (None: CRI, then the task API in ``default``).

    Raises:
        ContainerRefError: malformed, unknown, ambiguous (:class:`AmbiguousContainerError`) or not running.
        RuntimeQueryError: containerd could not be asked (the message names the socket and the gRPC status).
    """
    if not _REF.match(ref):
        raise ContainerRefError(f"{ref!r} is not a container id, id prefix or name (letters, digits, '.', '_', "
                                f"'-'); list them with `gpucr cri ps --address {address}`")
    from ..containerd import TaskError
    from ..cri import CriError

    cands: list[_Candidate] = []
    asked = []
    try:
        if namespace is None:
            cri = _cri_candidates(address, timeout_s)
            if cri is not None:
                cands += cri
                asked.append(f"CRI at {address}")
            namespace = DEFAULT_TASK_NAMESPACE
        cands += _task_candidates(address, namespace, timeout_s)
    except (CriError, TaskError) as exc:
        raise RuntimeQueryError(f"cannot ask containerd which container {ref!r} is: {exc}; check --address "
                                f"(containerd's socket) and that containerd runs") from exc
    asked.append(f"containerd namespace {namespace!r} at {address}")
    hits = _match(ref, cands)
    if not hits:
        short = f" (a prefix needs at least {MIN_PREFIX} characters)" if len(ref) < MIN_PREFIX else ""
        raise ContainerRefError(f"no container {ref!r} known to {' nor '.join(asked)}{short}: give its id, a unique "
                                f"id prefix or its name (`gpucr cri ps`, `ctr -n {namespace} t ls`), or --namespace")
    if len(hits) > 1:
        names = ", ".join(f"{c.id[:13]} ({c.name}, {c.namespace})" if c.via_cri else f"{c.id} ({c.namespace})"
                          for c in sorted(hits, key=lambda c: c.id))
        raise AmbiguousContainerError(f"container reference {ref!r} is ambiguous: {names}; give more of the id")
    c = hits[0]
    if c.state not in ("running", "paused", "pausing"):
        raise ContainerRefError(f"container {c.id} ({c.name}) is {c.state or 'not running'}: only a running "
                                f"container can be checkpointed")
    pid = _cri_pid(address, c.id, timeout_s) if c.via_cri else c.pid
    if pid <= 0:
        raise ContainerRefError(f"container {c.id} ({c.name}) has no running process (pid {pid}): start it first")
    _check_pid(pid, c)
    log.info("container %r is %s (%s, namespace %s), pid %d", ref, c.id, c.name, c.namespace, pid)
    return Resolved(c.id, pid, c.name, c.namespace, c.via_cri, c.pod_sandbox)
