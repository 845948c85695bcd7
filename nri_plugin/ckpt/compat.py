"""Can this node take a checkpoint's GPU state, and which GPU goes where: pure functions over what the checkpoint
recorded and what is here (no driver, no NVML; the callers pass their answers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .cuda.driver import format_api_version
from .errors import CheckpointError

__all__ = ["check_compat", "gpu_pairs"]


def check_compat(recorded: Mapping[str, Any], inventory: Mapping[str, str], driver_api: int, supports_remap: bool,
                 gpu_map: Mapping[str, str]) -> list[str]:
    """What keeps this node from restoring the checkpoint's CUDA state (empty when nothing does).

    ``recorded``: the checkpoint's ``cuda`` section (``driver_api``, ``gpus`` UUID -> chip, ``processes`` with their
    ``gpus``); ``inventory``: this node's GPUs, UUID -> chip (empty when unknown: GPUs are then not compared);
    ``driver_api``: this driver's API version; ``gpu_map``: old UUID -> new UUID asked for.
    """
    old_api = int(recorded.get("driver_api") or 0)
    diffs: list[str] = []
    if old_api and driver_api < old_api:
        diffs.append(f"driver API {format_api_version(driver_api)} here is older than "
                     f"{format_api_version(old_api)} at checkpoint")
    if gpu_map and not supports_remap:
        diffs.append("--gpu-map needs driver 580 (CUDA 13.0) or newer")
    old_gpus: Mapping[str, str] = recorded.get("gpus") or {}
    used = {u for p in recorded.get("processes") or [] for u in (p.get("gpus") or {})}
    for u in sorted(gpu_map):
        if u not in used and u not in old_gpus:
            diffs.append(f"--gpu-map names {u}, which was not a GPU of the checkpointing node "
                         f"(it had: {sorted(set(old_gpus) | used)})")
    if inventory:
        for u in sorted(used):
            target = gpu_map.get(u, u)
            if target not in inventory:
                diffs.append(f"GPU {u} used at checkpoint is not on this node (here: {sorted(inventory)}); "
                             f"map it with --gpu-map {u}=<uuid here>")
            elif old_gpus.get(u) and inventory[target] != old_gpus[u]:
                diffs.append(f"GPU chip differs: {old_gpus[u]} at checkpoint ({u}) vs {inventory[target]} here "
                             f"({target})")
    return diffs


def gpu_pairs(process_gpus: Iterable[str], node_gpus: Iterable[str], gpu_map: Mapping[str, str], *,
              pid: int | None = None) -> list[tuple[str, str]]:
    """Old->new UUID pairs for one process's CUDA restore; none when nothing moves (the driver's default).

    The driver wants the pairs to cover every GPU the process could see (measured on a 2-GPU H200: a PyTorch
    process on GPU 0 alone got CUDA_ERROR_INVALID_VALUE for the single pair GPU0->GPU1), so every GPU of the
    checkpointing node is paired, unmapped ones with themselves, and the result must be one-to-one.

    Raises:
        CheckpointError: (step compatibility) two old GPUs would land on one new GPU.
    """
    if not gpu_map:
        return []
    olds = list(dict.fromkeys([*process_gpus, *node_gpus, *gpu_map]))
    pairs = [(u, gpu_map.get(u, u)) for u in olds]
    news = [b for _, b in pairs]
    if len(set(news)) != len(news):
        dup = sorted({b for b in news if news.count(b) > 1})
        raise CheckpointError(
            f"--gpu-map must be one-to-one over the GPUs of the checkpointing node ({', '.join(olds)}): "
            f"{', '.join(dup)} would receive two GPUs; map the other one too (e.g. swap them)",
            step="compatibility", pid=pid)
    return pairs
