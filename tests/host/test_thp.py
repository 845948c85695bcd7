"""nri_plugin.host.thp: the refcounted THP boost of the driver stage, against a knob file of the test's own (the real
knob is exercised through the CLI in tests/ckpt/test_cli_parallel.py): set for the holders, the node's mode back when
the last one leaves, a dead holder's share dropped by reconcile, and a failure to write named."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nri_plugin.host.proc import start_time
from nri_plugin.host.thp import Held, ThpError, ThpStage, read_mode


@pytest.fixture
def knob(tmp_path: Path) -> Path:
    k = tmp_path / "enabled"
    k.write_text("always [madvise] never\n")
    return k


def test_read_mode_of_the_sysfs_form_and_a_plain_word(knob: Path, tmp_path: Path) -> None:
    assert read_mode(knob) == "madvise"
    (tmp_path / "plain").write_text("never\n")
    assert read_mode(tmp_path / "plain") == "never"
    assert read_mode(tmp_path / "absent") is None


def test_boost_sets_always_and_restores_the_nodes_mode(knob: Path, tmp_path: Path) -> None:
    stage = ThpStage(tmp_path / "state", knob)
    with stage.boosted() as held:
        assert read_mode(knob) == "always" and held.original == "madvise" and held.mode == "always"
        assert (tmp_path / "state/thp/original").read_text().strip() == "madvise"
    assert read_mode(knob) == "madvise"
    assert not list((tmp_path / "state/thp").glob("holder-*"))
    assert not (tmp_path / "state/thp/original").exists()


def test_restored_on_an_exception(knob: Path, tmp_path: Path) -> None:
    stage = ThpStage(tmp_path / "state", knob)
    with pytest.raises(RuntimeError), stage.boosted():
        raise RuntimeError("driver failed")
    assert read_mode(knob) == "madvise"


def test_concurrent_holders_share_it_and_the_last_one_restores(knob: Path, tmp_path: Path) -> None:
    a, b = ThpStage(tmp_path / "state", knob), ThpStage(tmp_path / "state", knob)
    ha = a.acquire()
    hb = b.acquire()
    assert hb.original == "madvise"  # the node's mode, not the boost the first holder set
    assert a.release(ha) is None
    assert read_mode(knob) == "always"  # the second checkpoint still copies
    assert b.release(hb) == "madvise"
    assert read_mode(knob) == "madvise"


def test_a_dead_holders_share_is_dropped_and_the_mode_restored(knob: Path, tmp_path: Path) -> None:
    """A holder SIGKILLed mid-copy: reconcile (the sweep's) finds its process gone and restores the node's mode;
    a living holder's share is never dropped."""
    state = tmp_path / "state"
    p = subprocess.Popen(["sleep", "60"])
    try:
        victim = ThpStage(state, knob)
        held = victim.acquire()
        # the share as the dead process would have left it
        dead = held.token.replace(f"holder-{os.getpid()}-{start_time(os.getpid())}-", f"holder-{p.pid}-"
                                  f"{start_time(p.pid)}-")
        (state / "thp" / held.token).rename(state / "thp" / dead)
        assert ThpStage(state, knob).reconcile() is None  # its holder lives
        assert read_mode(knob) == "always"
    finally:
        p.kill()
        p.wait()
    assert ThpStage(state, knob).reconcile() == "madvise"
    assert read_mode(knob) == "madvise" and not list((state / "thp").glob("holder-*"))


def test_release_by_another_process_from_the_lease_record(knob: Path, tmp_path: Path) -> None:
    held = ThpStage(tmp_path / "state", knob).acquire()
    again = Held.from_json(held.to_json())
    assert ThpStage(again.state_dir, Path(again.knob)).release(again) == "madvise"
    assert read_mode(knob) == "madvise"


def test_an_unwritable_knob_is_named(tmp_path: Path) -> None:
    knob = tmp_path / "ro"
    knob.mkdir()  # neither readable as a mode nor writable
    with pytest.raises(ThpError, match="cannot read transparent hugepages' mode from .*driver_thp"):
        ThpStage(tmp_path / "state", knob).acquire()


def test_a_knob_that_refuses_the_write_leaves_no_share(knob: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """sysfs refuses a write (a kernel without THP, a read-only /sys): root ignores file modes, so the refusal is
    injected at the one write; the share taken before it is dropped and the knob keeps the node's mode."""
    def refuse(self: ThpStage, mode: str) -> None:
        raise ThpError(f"cannot set transparent hugepages to {mode!r} in {self.knob}: Read-only file system")

    monkeypatch.setattr(ThpStage, "_write_knob", refuse)
    with pytest.raises(ThpError, match="Read-only"):
        ThpStage(tmp_path / "state", knob).acquire()
    assert not list((tmp_path / "state/thp").glob("holder-*"))
    assert not (tmp_path / "state/thp/original").exists() and read_mode(knob) == "madvise"
