"""``gpucr.io/restore-from`` at CreateContainer: the plugin's half of a restore into a new container.

The plugin resolves and checks the named checkpoint (``ckpt.restore_source``: inside the node's checkpoint root,
gpucr metadata and manifest intact), fits it to the new container (``policy.restore``: the GPU UUID map, the volumes),
takes the checkpoint's restore lock, stages a private images dir, and leaves a *ticket* in its root-only state dir
(``<state_dir>/restore/<container id>.json``). gpucr's runc wrapper finds the ticket when containerd runs
``runc create`` for that container and runs ``runc restore --detach`` instead (``handlers.runc_restore``). Any
refusal raises, so containerd fails the creation with the message and nothing has started. Why this route:
docs/design.md.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..ckpt import marker
from ..ckpt.restore_source import (
    RestoreSourceError, acquire_lock, locks_dir, open_source, release_lock, stage, unstage,
)
from ..policy import ContainerView, Decision, NodeConfig
from ..policy.restore import RestorePlan, assigned_gpus, plan_restore

__all__ = ["RESTORE_ANNOTATION", "RestorePlan", "Ticket", "finish", "load_ticket", "prepare", "ticket_path"]

log = logging.getLogger(__name__)

RESTORE_ANNOTATION = "gpucr.io/restore-from"
TICKETS = "restore"


@dataclass(frozen=True)
class Ticket:
    """What the runc wrapper needs: the staged images and work dirs, and the lock to drop afterwards."""

    container_id: str
    checkpoint: str
    path: str
    kind: str
    images: str
    work: str
    lock: str


def ticket_path(state_dir: Path, container_id: str) -> Path:
    if not container_id or "/" in container_id or container_id.startswith("."):
        raise RestoreSourceError(f"container id {container_id!r} is not usable as a file name")
    return state_dir / TICKETS / f"{container_id}.json"


def load_ticket(state_dir: Path, container_id: str) -> Ticket | None:
    """The container's ticket, or None when the plugin wrote none. Raises RestoreSourceError when corrupt."""
    p = ticket_path(state_dir, container_id)
    try:
        return Ticket(**json.loads(p.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise RestoreSourceError(f"gpucr's restore ticket {p} is unreadable ({exc})") from exc


def _stage_gpu_map(images: Path, mk: marker.CudaMarker, gpu_map: tuple[tuple[str, str], ...]) -> None:
    """The plan's GPU map also in the staged copy of the CUDA marker (a new file: the staged one may be a hard link
    into the checkpoint): the front falls back to it when the restored tree's cgroup does not name the new container
    (measured with runc 1.1 on a cgroup-v2-only host: CRIU recreates the checkpointed container's cgroup path)."""
    path = images / marker.MARKER
    path.unlink(missing_ok=True)
    marker.write(str(images), marker.CudaMarker(mk.container_id, mk.managed, mk.pid, mk.processes, mk.gpus,
                                                mk.driver_version, [list(p) for p in gpu_map]))


def _node_gpus() -> tuple[dict[str, str], str]:
    """This node's GPUs (UUID -> model) and driver version from NVML; nothing when NVML is not there (then GPU
    models and the driver are not compared here; the CUDA restore still checks what the driver refuses)."""
    from ..ckpt.cuda.nvml import Nvml, NvmlError
    try:
        nv = Nvml()
        return {g.uuid: g.name for g in nv.gpus()}, nv.driver_version()
    except NvmlError as exc:
        log.info("NVML unavailable (%s): GPU models and driver version of restores are not compared", exc)
        return {}, ""


def prepare(view: ContainerView, decision: Decision, node: NodeConfig) -> RestorePlan:
    """Check, fit, lock and stage ``decision.policy.restore_from`` for ``view``; write the ticket.

    Raises:
        RestoreSourceError: one line naming the container, the checkpoint, what is wrong and the fix; nothing is
            left behind (no lock, no staged files, no ticket).
    """
    name = decision.policy.restore_from or ""
    root = node.checkpoint_root
    what = f"{view.describe()}: cannot restore from checkpoint {name!r}"
    if RESTORE_ANNOTATION not in view.annotations:
        raise RestoreSourceError(f"{what}: {RESTORE_ANNOTATION} is set on the pod, where it would restore every "
                                 "container of the pod from one checkpoint; set it on the container")
    try:
        src = open_source(root, name)
    except RestoreSourceError as exc:
        raise RestoreSourceError(f"{what}: {exc}") from exc
    mk = src.marker
    used = sorted({u for p in (mk.processes if mk else []) for u in (p.get("gpus") or {})})
    inventory, driver_now = _node_gpus() if used else ({}, "")
    plan = plan_restore(used=used, node_gpus=mk.gpus if mk else {},
                        assigned=assigned_gpus(view.env, view.cdi_devices), explicit_map=decision.policy.gpu_map,
                        recorded_volumes=src.mounts, volumes_now={m.destination: m.source for m in view.mounts},
                        inventory=inventory, driver_now=driver_now, driver_then=mk.driver_version if mk else "")
    if plan.problems:
        raise RestoreSourceError(f"{what}: it does not fit this container: {'; '.join(plan.problems)}")
    state = node.state_dir
    try:
        lock = acquire_lock(locks_dir(root), src, view.id, lambda owner: ticket_path(state, owner).exists())
    except RestoreSourceError as exc:
        raise RestoreSourceError(f"{what}: {exc}") from exc
    try:
        images, work = stage(src, root, view.id)
        if plan.gpu_map and mk is not None:
            _stage_gpu_map(images, mk, plan.gpu_map)
        t = Ticket(view.id, name, str(src.path), src.kind, str(images), str(work), str(lock))
        p = ticket_path(state, view.id)
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(t), f)
        tmp.replace(p)
    except (RestoreSourceError, OSError) as exc:
        release_lock(lock, view.id)
        unstage(root, view.id)
        raise RestoreSourceError(f"{what}: {exc}") from exc
    return plan


def finish(node: NodeConfig, container_id: str, *, keep_work: bool = False) -> bool:
    """Drop what :func:`prepare` left for ``container_id`` (ticket, lock, staged files). True if there was a
    ticket. ``keep_work``: keep the CRIU work dir (restore.log) of a restore that ran."""
    try:
        t = load_ticket(node.state_dir, container_id)
    except RestoreSourceError:
        t = None
    if t is not None:
        release_lock(Path(t.lock), container_id)
        ticket_path(node.state_dir, container_id).unlink(missing_ok=True)
    if keep_work and t is not None:
        import shutil
        shutil.rmtree(t.images, ignore_errors=True)
    else:
        unstage(node.checkpoint_root, container_id)
    return t is not None
