"""nri_plugin.ckpt.compat as tables: recorded GPUs, GPUs here and maps, with the expected problems and pairs."""

from __future__ import annotations

from typing import Any

import pytest

from nri_plugin.ckpt.compat import check_compat, gpu_pairs
from nri_plugin.ckpt.errors import CheckpointError

G0, G1, G2 = "GPU-00000000-0000-0000-0000-000000000000", "GPU-11111111-1111-1111-1111-111111111111", \
    "GPU-22222222-2222-2222-2222-222222222222"
H200, H100 = "NVIDIA H200", "NVIDIA H100 80GB HBM3"
RECORDED: dict[str, Any] = {"driver_api": 13000, "gpus": {G0: H200, G1: H200},
                            "processes": [{"pid": 7, "gpus": {G0: 1 << 30}}]}


@pytest.mark.parametrize("here, api, remap, gpu_map, problems", [
    ({G0: H200, G1: H200}, 13000, True, {}, []),
    ({}, 13000, True, {}, []),                                            # no NVML here: GPUs not compared
    ({G0: H200}, 12080, True, {}, ["driver API 12.8 here is older than 13.0 at checkpoint"]),
    ({G0: H200}, 13010, True, {}, []),                                    # newer driver: fine
    ({G1: H100}, 13000, True, {}, [f"GPU {G0} used at checkpoint is not on this node (here: ['{G1}']); "
                                   f"map it with --gpu-map {G0}=<uuid here>"]),
    ({G1: H100}, 13000, True, {G0: G1}, [f"GPU chip differs: {H200} at checkpoint ({G0}) vs {H100} here ({G1})"]),
    ({G1: H200}, 13000, True, {G0: G1}, []),
    ({G1: H200}, 13000, False, {G0: G1}, ["--gpu-map needs driver 580 (CUDA 13.0) or newer"]),
    ({G0: H200, G2: H200}, 13000, True, {G2: G0, G0: G2},
     [f"--gpu-map names {G2}, which was not a GPU of the checkpointing node (it had: ['{G0}', '{G1}'])"]),
])
def test_check_compat(here: dict[str, str], api: int, remap: bool, gpu_map: dict[str, str],
                      problems: list[str]) -> None:
    assert check_compat(RECORDED, here, api, remap, gpu_map) == problems


@pytest.mark.parametrize("proc, node, gpu_map, pairs", [
    ([G0], [G0, G1], {}, []),                                             # nothing moves: the driver's default
    ([G0], [G0, G1], {G0: G1, G1: G0}, [(G0, G1), (G1, G0)]),             # a swap covers every GPU
    ([G0], [G0], {G0: G0}, [(G0, G0)]),
    ([G0], [G0], {G0: G1}, [(G0, G1)]),                                   # one GPU node, to another GPU
    ([], [G0, G1, G2], {G2: G0, G0: G2}, [(G0, G2), (G1, G1), (G2, G0)]),  # unmapped ones paired with themselves
])
def test_gpu_pairs(proc: list[str], node: list[str], gpu_map: dict[str, str], pairs: list[tuple[str, str]]) -> None:
    assert gpu_pairs(proc, node, gpu_map) == pairs


def test_gpu_pairs_must_be_one_to_one() -> None:
    """Measured on a 2-GPU H200: the driver refuses pairs that leave a visible GPU out (INVALID_VALUE)."""
    with pytest.raises(CheckpointError, match=f"{G1} would receive two GPUs; map the other one too") as ei:
        gpu_pairs([G0], [G0, G1], {G0: G1}, pid=7)
    assert ei.value.step == "compatibility" and ei.value.pid == 7
