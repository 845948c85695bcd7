"""``gpucr.io/restore-from`` at CreateContainer: the plugin's half of a restore into a new container.

containerd waits for an NRI plugin's answer ``plugin_request_timeout`` (2 s by default) and then creates the
container *without* the plugin's adjustments (bench/results/gpu_restore.md: a 4.4 GiB checkpoint staged inside the
call started fresh). So the plugin does only what is bounded by the number of files, not their size: it resolves the
named checkpoint (``ckpt.restore_source``: inside the node's checkpoint root, gpucr metadata, every file's size, the
CUDA marker), fits it to the new container (``policy.restore``: the GPU UUID map, the volumes, GPU model and driver,
the CRIU and kernel that dumped it: ``ckpt.versions``), takes the checkpoint's restore lock and leaves a *ticket* in its root-only state
dir (``<state_dir>/restore/<container id>.json``). The ticket is written first of all, as ``pending``, before anything
that could be slow, then ``ready`` or ``refused``: gpucr's runc wrapper (``handlers.runc_restore``) looks for it at
every ``runc create``, so a container whose plugin answer containerd dropped fails to start with the reason instead of
starting fresh. The wrapper does the slow part (the manifest's digests, staging, the rootfs changes) and runs
``runc restore --detach``. Any refusal here raises, so containerd fails the creation with the message and nothing has
started. Why this route: docs/design.md.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..ckpt import marker
from ..ckpt.layout import IMAGES
from ..ckpt.restore_source import (
    ARCHIVE, STAGING, RestoreSource, RestoreSourceError, acquire_lock, archive_member, locks_dir, open_source,
    release_lock, unstage,
)
from ..policy import ContainerView, Decision, NodeConfig
from ..policy.restore import RestorePlan, assigned_gpus, plan_restore

__all__ = ["PENDING", "READY", "REFUSED", "RESTORE_ANNOTATION", "TEST_DELAY_ENV", "TICKET_ANNOTATION", "RestorePlan",
           "Ticket", "finish", "load_ticket", "prepare", "stage_gpu_map", "staging_area", "ticket_path"]

log = logging.getLogger(__name__)

RESTORE_ANNOTATION = "gpucr.io/restore-from"
#: added by the plugin's adjustment with the container's id: the runc wrapper's proof that containerd applied it
TICKET_ANNOTATION = "gpucr.io/restore-ticket"
TICKETS = "restore"
PENDING, READY, REFUSED = "pending", "ready", "refused"
#: test-only: a file whose number is the seconds the plugin sleeps in a restore's CreateContainer after the pending
#: ticket (tests of an answer containerd drops); a product run never sets it
TEST_DELAY_ENV = "GPUCR_TEST_RESTORE_DELAY_FILE"
#: a refused ticket outlives its CreateContainer this long (in case containerd dropped the refusal and creates the
#: container anyway: its runc create then fails with the refusal), then the next restore sweeps it
REFUSED_TTL_S = 3600.0


@dataclass(frozen=True)
class Ticket:
    """The plugin's word on a container's restore, for the runc wrapper: ``state`` pending (the plugin's checks
    had not finished), refused (``error`` says why) or ready (``path``/``kind`` checked, ``lock`` held,
    ``gpu_map`` for the CUDA restore)."""

    container_id: str
    checkpoint: str
    state: str = PENDING
    path: str = ""
    kind: str = ""
    lock: str = ""
    gpu_map: list[list[str]] = field(default_factory=list)
    error: str = ""
    created_at: float = 0.0


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


def _write_ticket(state_dir: Path, t: Ticket) -> None:
    p = ticket_path(state_dir, t.container_id)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(t), f)
    tmp.replace(p)


def _sweep_refused(state_dir: Path) -> None:
    d = state_dir / TICKETS
    for p in d.glob("*.json") if d.is_dir() else []:
        try:
            t = Ticket(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if t.state == REFUSED and time.time() - t.created_at > REFUSED_TTL_S:
            p.unlink(missing_ok=True)


def _test_delay(view: ContainerView) -> None:
    path = os.environ.get(TEST_DELAY_ENV)
    try:
        secs = float(Path(path).read_text()) if path else 0.0
    except (OSError, ValueError):
        secs = 0.0
    if secs > 0:
        log.warning("test delay: %.1f s in CreateContainer of %s (%s)", secs, view.describe(), TEST_DELAY_ENV)
        time.sleep(secs)


def stage_gpu_map(images: Path, mk: marker.CudaMarker, gpu_map: list[list[str]]) -> None:
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


def _version_problems(src: RestoreSource, node: NodeConfig, what: str) -> list[str]:
    """The checkpoint's CRIU and kernel against this node's CRIU (the config's ``criu_path``) and kernel
    (:func:`nri_plugin.ckpt.versions.node_version_problems`, which ``gpucr restore`` runs too)."""
    from ..ckpt.criu.errors import CriuError
    from ..ckpt.versions import node_version_problems
    try:
        return node_version_problems(criu_then=src.meta.criu_version, kernel_then=src.meta.kernel_release,
                                     criu=node.criu_path, allow_older_kernel=node.restore_allow_older_kernel)
    except CriuError as exc:
        raise RestoreSourceError(f"{what}: {exc}") from exc


def _check_shared_pid_ns(ns_path: str, src: RestoreSource, what: str) -> None:
    """A container joining its pod's shared pid namespace: refused now when a pid the restore needs is already taken
    there (by the sandbox or another container: nothing frees it before the start). The runc wrapper checks again
    at the start, and moves the namespace's pid cursor (:func:`nri_plugin.ckpt.pidns.prepare`)."""
    from ..ckpt.pidns import PSTREE, PidNsError, check_free, pstree_pids
    try:
        if src.kind == "cri-archive":
            data = archive_member(src.path / ARCHIVE, f"checkpoint/{PSTREE}")
            where = f"{src.path / ARCHIVE}:checkpoint/{PSTREE}"
        else:
            where = str(src.path / IMAGES / PSTREE)
            data = Path(where).read_bytes()
        if data is None:
            raise RestoreSourceError(f"{what}: the checkpoint holds no {PSTREE}: it is not a CRIU checkpoint")
        own, _ = pstree_pids(data, where)
        check_free(ns_path, own, what)
    except PidNsError as exc:
        raise RestoreSourceError(str(exc)) from exc
    except OSError as exc:
        raise RestoreSourceError(f"{what}: cannot read the checkpoint's process tree: {exc}") from exc


def prepare(view: ContainerView, decision: Decision, node: NodeConfig) -> RestorePlan:
    """Check and fit ``decision.policy.restore_from`` for ``view``, take its restore lock, write the ready ticket.
    Bounded work only (no digest, no copy): containerd gives this call 2 s by default.

    Raises:
        RestoreSourceError: one line naming the container, the checkpoint, what is wrong and the fix; no lock is
            held and the ticket says ``refused`` with the same line (for the wrapper, should containerd have
            dropped this answer).
    """
    name = decision.policy.restore_from or ""
    state = node.state_dir
    _write_ticket(state, Ticket(view.id, name, PENDING, created_at=time.time()))  # first: before anything slow
    _test_delay(view)
    try:
        return _prepare(view, decision, node, name)
    except RestoreSourceError as exc:
        _write_ticket(state, Ticket(view.id, name, REFUSED, error=str(exc), created_at=time.time()))
        raise


def _prepare(view: ContainerView, decision: Decision, node: NodeConfig, name: str) -> RestorePlan:
    root = node.checkpoint_root
    what = f"{view.describe()}: cannot restore from checkpoint {name!r}"
    if RESTORE_ANNOTATION not in view.annotations:
        raise RestoreSourceError(f"{what}: {RESTORE_ANNOTATION} is set on the pod, where it would restore every "
                                 "container of the pod from one checkpoint; set it on the container")
    try:
        src = open_source(root, name, verify_sha256=False)  # sizes; the digests: the runc wrapper, at runc create
    except RestoreSourceError as exc:
        raise RestoreSourceError(f"{what}: {exc}") from exc
    mk = src.marker
    used = sorted({u for p in (mk.processes if mk else []) for u in (p.get("gpus") or {})})
    inventory, driver_now = _node_gpus() if used else ({}, "")
    plan = plan_restore(used=used, node_gpus=mk.gpus if mk else {},
                        assigned=assigned_gpus(view.env, view.cdi_devices), explicit_map=decision.policy.gpu_map,
                        recorded_volumes=src.mounts, volumes_now={m.destination: m.source for m in view.mounts},
                        inventory=inventory, driver_now=driver_now, driver_then=mk.driver_version if mk else "")
    problems = [*_version_problems(src, node, what), *plan.problems]
    if problems:
        raise RestoreSourceError(f"{what}: it does not fit this container: {'; '.join(problems)}")
    if view.pid_ns:
        _check_shared_pid_ns(view.pid_ns, src, what)
    state = node.state_dir
    _sweep_refused(state)

    def live(owner: str) -> bool:
        try:
            t = load_ticket(state, owner)
        except RestoreSourceError:
            return True
        return t is not None and t.state != REFUSED

    try:
        lock = acquire_lock(locks_dir(root), src, view.id, live)
    except RestoreSourceError as exc:
        raise RestoreSourceError(f"{what}: {exc}") from exc
    try:
        _write_ticket(state, Ticket(view.id, name, READY, str(src.path), src.kind, str(lock),
                                    [list(p) for p in plan.gpu_map], created_at=time.time()))
    except OSError as exc:
        release_lock(lock, view.id)
        raise RestoreSourceError(f"{what}: cannot write gpucr's restore ticket in {state}: {exc}") from exc
    return plan


def finish(node: NodeConfig, container_id: str, *, keep_work: bool = False) -> bool:
    """Drop what a restore left for ``container_id`` (ticket, lock, staged files). True if there was a ticket.
    ``keep_work``: keep the CRIU work dir (restore.log) of a restore that ran, until the container is removed."""
    try:
        t = load_ticket(node.state_dir, container_id)
    except RestoreSourceError:
        t = None
    if t is not None and t.lock:
        release_lock(Path(t.lock), container_id)
    ticket_path(node.state_dir, container_id).unlink(missing_ok=True)
    if keep_work:
        import shutil
        area = staging_area(node, container_id)
        for p in area.iterdir() if area.is_dir() else []:
            if p.name != "work":
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    else:
        unstage(node.checkpoint_root, container_id)
    return t is not None


def staging_area(node: NodeConfig, container_id: str) -> Path:
    """Where the wrapper stages ``container_id``'s restore (``ckpt.restore_source.stage``)."""
    return node.checkpoint_root.resolve() / STAGING / container_id
