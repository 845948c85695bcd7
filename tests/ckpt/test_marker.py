"""nri_plugin.ckpt.marker, the one owner of gpucr-cuda.json: round trip, private file, unknown format, unreadable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_plugin.ckpt import marker
from nri_plugin.ckpt.marker import MARKER, CudaMarker, MarkerError


def test_round_trip_private(tmp_path: Path) -> None:
    m = CudaMarker("c1", True, 42, [{"pid": 42, "gpus": {"GPU-a": 1 << 30}, "state": "CHECKPOINTED"}],
                   {"GPU-a": "NVIDIA H200"}, "580.159.04", [["GPU-a", "GPU-b"]])
    marker.write(str(tmp_path), m)
    assert (tmp_path / MARKER).stat().st_mode & 0o777 == 0o600
    got = marker.read(str(tmp_path))
    assert got.to_json() == m.to_json() and got.to_json()["format"] == 1
    assert json.loads((tmp_path / MARKER).read_text())["container_id"] == "c1"


def test_write_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("keep")
    (tmp_path / "images").mkdir()
    os.symlink(outside, tmp_path / "images" / MARKER)
    with pytest.raises(OSError):
        marker.write(str(tmp_path / "images"), CudaMarker("c", False, 1, [], {}))
    assert outside.read_text() == "keep"


@pytest.mark.parametrize("content, match", [
    (None, "is unreadable"),
    ("{broken", "is unreadable"),
    ('{"format": 2}', "unknown format"),
    ("[]", "unknown format"),
    ('{"format": 1, "pid": "x"}', "is corrupt"),
])
def test_bad_markers_are_named(tmp_path: Path, content: str | None, match: str) -> None:
    if content is not None:
        (tmp_path / MARKER).write_text(content)
    with pytest.raises(MarkerError, match=match) as ei:
        marker.read(str(tmp_path))
    assert str(tmp_path / MARKER) in str(ei.value)
