"""A container's periodic checkpoints on disk: naming, commit with ``latest``, rotation that keeps the newest, never
touches what is not gpucr's nor what a restore holds, and tidies what a killed writer left (real files, no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from nri_plugin.ckpt.layout import CheckpointDir, LayoutError, Metadata
from nri_plugin.ckpt.restore_source import open_source, resolve
from nri_plugin.ckpt.series import LATEST, Series, series_name

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def _take(s: Series, now: float, series: str | None = None) -> Path:
    """One checkpoint as the daemon writes it: staged, a runtime's images, sealed, committed."""
    tmp, final = s.begin(now)
    assert tmp.name.startswith(f".{final.name}.gpucr-tmp-") and tmp.parent == final.parent
    (tmp / "images").mkdir(mode=0o700)
    (tmp / "images" / "descriptors.json").write_text("[]")
    (tmp / "images" / "pages-1.img").write_bytes(os.urandom(512))
    CheckpointDir(tmp).finalize(Metadata(container_id="c1", extra={"periodic": {"series": series or s.name}}))
    s.commit(tmp, final)
    return final


@pytest.fixture
def series(tmp_path: Path) -> Series:
    root = tmp_path / "root"
    root.mkdir(mode=0o700)
    return Series(root, series_name("ml", "job-0", "train"))


def test_names_are_restore_from_names() -> None:
    assert series_name("ml", "job-0", "train") == "periodic/ml/job-0/train"
    assert series_name("", ".hidden", "a b/c") == "periodic/default/_hidden/a_b_c"


def test_rotation_keeps_the_newest_and_latest_names_it(series: Series) -> None:
    names = [_take(series, T0 + i).name for i in range(4)]
    assert names == ["20270115T080000Z", "20270115T080001Z", "20270115T080002Z", "20270115T080003Z"]
    assert os.readlink(series.dir / LATEST) == names[-1]
    removed, held = series.prune(2, series.root / "locks")
    assert [p.name for p in removed] == names[:2] and held == []
    assert [p.name for p in series.completed()] == names[2:]
    assert resolve(series.root, f"{series.name}/{LATEST}") == series.dir / names[-1]
    assert open_source(series.root, f"{series.name}/{LATEST}").meta.extra["periodic"]["series"] == series.name
    assert not [p for p in series.dir.iterdir() if p.name.startswith(".")]
    assert oct(series.dir.stat().st_mode & 0o777) == oct(0o700)
    assert oct((series.root / "periodic").stat().st_mode & 0o777) == oct(0o700)


def test_same_second_and_clock_stepping_back_still_sort_in_order(series: Series) -> None:
    a = _take(series, T0 + 10).name
    b = _take(series, T0 + 10).name
    c = _take(series, T0).name  # the clock stepped back
    assert (a, b, c) == ("20270115T080010Z", "20270115T080010Z-1", "20270115T080010Z-2")
    assert [p.name for p in series.completed()] == [a, b, c]
    assert os.readlink(series.dir / LATEST) == c


def test_prune_leaves_foreign_and_other_series_and_locked_ones(series: Series) -> None:
    old = _take(series, T0)
    other = _take(series, T0 + 1, series="periodic/x/y/z")  # gpucr's, but another series' (copied in by hand)
    foreign = series.dir / "20000101T000000Z"
    foreign.mkdir(mode=0o700)
    (foreign / "notes").write_text("mine")
    unsealed = series.dir / "20000101T000001Z"
    unsealed.mkdir(mode=0o700)
    for i in range(2, 5):
        _take(series, T0 + i)
    locks = series.root / "locks"
    locks.mkdir()
    (locks / "x.lock").write_text(json.dumps({"container_id": "r", "checkpoint": str(old.resolve())}))
    removed, held = series.prune(1, locks)
    assert held == [old] and old.exists()
    assert [p.name for p in removed] == ["20270115T080002Z", "20270115T080003Z"]
    assert other.exists() and (foreign / "notes").read_text() == "mine" and unsealed.exists()


def test_begin_refuses_a_series_dir_writable_by_others(series: Series) -> None:
    series.dir.mkdir(parents=True)
    os.chmod(series.dir, 0o777)
    with pytest.raises(LayoutError, match="writable"):
        series.begin(T0)


def test_begin_tidies_what_a_killed_writer_left(series: Series) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    series.dir.mkdir(parents=True)
    for mark in ("tmp", "del"):
        d = series.dir / f".20270115T075959Z.gpucr-{mark}-{p.pid}"
        d.mkdir(mode=0o700)
        (d / "x").write_text("half")
    (series.dir / f".latest.tmp-{p.pid}").symlink_to("20270115T075959Z")
    mine = series.dir / f".20270115T075958Z.gpucr-tmp-{os.getppid()}"  # a living writer's: left alone
    mine.mkdir(mode=0o700)
    tmp, _ = series.begin(T0)
    assert sorted(x.name for x in series.dir.iterdir()) == sorted([tmp.name, mine.name])
    Series.discard(tmp)
    assert not tmp.exists()


def test_another_nodes_leftovers_in_a_shared_root_are_left_alone(series: Series) -> None:
    """The root may be shared by several nodes (docs/flows.md): a staging or half-deleted dir named by another
    node carries a pid that means nothing here, so tidy never removes it."""
    p = subprocess.Popen(["true"])
    p.wait()
    series.dir.mkdir(parents=True)
    other = [series.dir / f".20270115T075959Z.gpucr-{m}-othernode.0badc0de-{p.pid}" for m in ("tmp", "del")]
    for d in other:
        d.mkdir(mode=0o700)
    tmp, _ = series.begin(T0)
    assert all(d.exists() for d in other) and tmp.name.endswith(f"-{os.getpid()}")
    Series.discard(tmp)
    assert not tmp.exists()


def test_prune_keeps_one_that_another_node_restores_through_its_own_mount(series: Series) -> None:
    """A lock written by another node names the checkpoint at that node's mount path; its path relative to the
    root (``name``) is what both nodes share, and it keeps the checkpoint."""
    old = _take(series, T0)
    for i in range(1, 3):
        _take(series, T0 + i)
    locks = series.root / ".restore-locks"
    locks.mkdir()
    rel = os.path.relpath(old.resolve(), series.root.resolve())
    (locks / "x.lock").write_text(json.dumps({"container_id": "r", "checkpoint": f"/mnt/elsewhere/{rel}",
                                              "name": rel, "node": "othernode.0badc0de"}))
    removed, held = series.prune(1, locks)
    assert held == [old] and old.exists() and len(removed) == 1
