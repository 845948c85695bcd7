"""The clean-slate check itself (tests/slate.py): it reports what a run created and left, and only what is this
run's (its instance's names or its temp dir), so runs sharing a machine do not fail each other."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.slate import Snapshot


def test_reports_own_leftovers_and_ignores_other_runs(tmp_path: Path) -> None:
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    snap = Snapshot.take(root, tmp, "inst1")
    assert snap.leftovers() == []
    (root / "ctrd-2.1.9-inst1").mkdir()          # this run's private containerd dir
    (root / "ctrd-2.1.9-other").mkdir()          # another developer's
    p = subprocess.Popen(["sleep", "30"], cwd=tmp)  # a process left in this session's temp dir
    try:
        left = snap.leftovers()
        assert f"test-root entry {root / 'ctrd-2.1.9-inst1'}" in left
        assert not any("other" in x for x in left)
        assert any(x.startswith(f"process {p.pid}:") for x in left)
    finally:
        p.kill()
        p.wait()
    (root / "ctrd-2.1.9-inst1").rmdir()
    assert snap.leftovers() == []


def test_default_names_without_an_instance(tmp_path: Path) -> None:
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    snap = Snapshot.take(root, tmp, None)
    for name in ("ctrd-1.7.24", "front-route-default-fr", "ctrd-2.1.9-gpucr-pre", "ctrd-2.1.9-someone"):
        (root / name).mkdir()
    left = snap.leftovers()
    assert {x.rsplit("/", 1)[1] for x in left if x.startswith("test-root")} == {
        "ctrd-1.7.24", "front-route-default-fr", "ctrd-2.1.9-gpucr-pre"}
