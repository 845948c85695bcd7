"""ckpt.via_runtime's own logic without containerd: finding gpucr's CUDA marker in a runtime's checkpoint (an images
dir, or CRI's archive). The checkpoint through containerd is covered by tests/front/test_restore_from.py,
test_gpufront.py::test_gpucr_checkpoint_via_runtime and test_periodic_checkpoints.py."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from nri_plugin.ckpt import marker
from nri_plugin.ckpt.via_runtime import _marker_of


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as t:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return path


def test_marker_in_images_dir_and_archive(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    assert _marker_of(images, False) is None
    mk = marker.CudaMarker("c1", True, 7, [{"pid": 7, "gpus": {"GPU-a": 1}}], {"GPU-a": "H200"})
    marker.write(str(images), mk)
    assert _marker_of(images, False).processes == mk.processes  # type: ignore[union-attr]
    body = (images / marker.MARKER).read_bytes()
    tar = _archive(tmp_path / "checkpoint.tar", {f"checkpoint/{marker.MARKER}": body, "spec.dump": b"{}"})
    assert _marker_of(tar, True).container_id == "c1"  # type: ignore[union-attr]
    assert _marker_of(_archive(tmp_path / "none.tar", {"spec.dump": b"{}"}), True) is None


def test_unreadable_marker_in_archive_is_an_error(tmp_path: Path) -> None:
    tar = _archive(tmp_path / "checkpoint.tar", {f"checkpoint/{marker.MARKER}": b"{not json"})
    with pytest.raises(marker.MarkerError, match="unreadable"):
        _marker_of(tar, True)
