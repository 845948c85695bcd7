"""Fitting a checkpoint to the container that restores it (``gpucr.io/restore-from``): which GPU goes where and
which volumes must be there. Pure: what the checkpoint recorded and what the new container asks for in, a
:class:`RestorePlan` (or the differences that make the restore impossible) out. Decided at CreateContainer, so an
incompatible checkpoint is refused before anything starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..ckpt.compat import gpu_pairs
from ..ckpt.errors import CheckpointError

__all__ = ["RestorePlan", "assigned_gpus", "plan_restore"]


@dataclass(frozen=True)
class RestorePlan:
    """``gpu_map``: old -> new UUID pairs for the CUDA restore (empty: identity); ``volumes``: container path ->
    (host path at checkpoint, host path now) for each volume whose host path differs; ``problems``: why the
    checkpoint does not fit (the restore is refused when any)."""

    gpu_map: tuple[tuple[str, str], ...] = ()
    volumes: tuple[tuple[str, str, str], ...] = ()
    problems: tuple[str, ...] = ()


def assigned_gpus(env: Iterable[str], cdi_devices: Iterable[str] = ()) -> tuple[str, ...]:
    """The GPU UUIDs the new container is given: ``NVIDIA_VISIBLE_DEVICES`` UUIDs and ``nvidia.com/gpu=GPU-...`` CDI
    names, in order (indices and ``all`` name no UUID: nothing to compare then)."""
    out: list[str] = []
    for kv in env:
        k, _, v = kv.partition("=")
        if k == "NVIDIA_VISIBLE_DEVICES":
            out += [u.strip() for u in v.split(",") if u.strip().startswith("GPU-")]
    for n in cdi_devices:
        vendor, _, dev = n.partition("=")
        if vendor == "nvidia.com/gpu" and dev.startswith("GPU-"):
            out.append(dev)
    return tuple(dict.fromkeys(out))


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))


def _complete(pairs: dict[str, str], olds: Sequence[str], assigned: Sequence[str]) -> dict[str, str]:
    """Extend ``pairs`` to a one-to-one map over every old GPU (the driver wants the whole set): an unmapped GPU
    keeps its UUID when no other takes it, else gets a GPU nobody took."""
    if not pairs:
        return pairs
    olds = list(dict.fromkeys(olds))
    out = dict(pairs)
    taken = set(out.values())
    rest = [u for u in olds if u not in out]
    for u in rest:
        if u not in taken:
            out[u] = u
            taken.add(u)
    pool = [g for g in dict.fromkeys([*olds, *assigned]) if g not in taken]
    for u in rest:
        if u not in out and pool:
            out[u] = pool.pop(0)
    return out


def plan_restore(*, used: Sequence[str], node_gpus: Mapping[str, str], assigned: Sequence[str],
                 explicit_map: Sequence[tuple[str, str]], recorded_volumes: Mapping[str, str],
                 volumes_now: Mapping[str, str], inventory: Mapping[str, str] | None = None,
                 driver_now: str = "", driver_then: str = "") -> RestorePlan:
    """Plan the restore of a checkpoint whose processes used GPUs ``used`` (of the checkpointing node's
    ``node_gpus``, UUID -> chip) into a container assigned ``assigned`` GPUs, with its ``gpucr.io/gpu-map``
    (``explicit_map``, which wins), and volumes: container path -> host path at checkpoint and now. With this
    node's ``inventory`` (UUID -> chip, from NVML; empty: unknown, not compared) and driver versions, a GPU of
    another model or an older driver than at checkpoint is refused."""
    problems: list[str] = []
    pairs: dict[str, str] = dict(explicit_map)
    if not pairs and assigned:
        if len(used) > len(assigned):
            problems.append(f"the checkpoint's processes used {len(used)} GPU(s) ({', '.join(used)}) but the "
                            f"container is assigned {len(assigned)} ({', '.join(assigned)}): assign at least "
                            f"{len(used)} GPU(s)")
        else:
            free = [u for u in assigned if u not in used]
            for u in used:
                if u not in assigned:
                    pairs[u] = free.pop(0)
            pairs = _complete(pairs, [*node_gpus, *used], assigned)
    if pairs:
        try:
            full = gpu_pairs(used, list(node_gpus), pairs)
        except CheckpointError as exc:
            problems.append(str(exc).replace("--gpu-map", "the GPU map"))
            full = []
        if assigned:
            stray = sorted({b for a, b in full if a in used and b not in assigned})
            if stray:
                problems.append(f"the GPU map sends the checkpoint's GPUs to {', '.join(stray)}, which the "
                                f"container is not assigned ({', '.join(assigned)})")
        gpu_map = tuple(full)
    else:
        gpu_map = ()
    if used and driver_now and driver_then and _version(driver_now) < _version(driver_then):
        problems.append(f"the driver here ({driver_now}) is older than at checkpoint ({driver_then}): restore on "
                        f"a node with driver {driver_then} or newer")
    if used and inventory:
        target = dict(gpu_map)
        for u in used:
            new = target.get(u, u)
            if new not in inventory:
                problems.append(f"GPU {new} (for {u} of the checkpoint) is not on this node (here: "
                                f"{', '.join(sorted(inventory))})")
            elif node_gpus.get(u) and inventory[new] != node_gpus[u]:
                problems.append(f"GPU model differs: {node_gpus[u]} at checkpoint ({u}) vs {inventory[new]} here "
                                f"({new})")
    volumes: list[tuple[str, str, str]] = []
    for dest, old in sorted(recorded_volumes.items()):
        new = volumes_now.get(dest)
        if new is None:
            problems.append(f"the checkpoint has a volume at {dest} (host path {old} at checkpoint) and the "
                            f"container mounts nothing there: add a volume at {dest}")
        elif new != old:
            volumes.append((dest, old, new))
    return RestorePlan(gpu_map, tuple(volumes), tuple(problems))
