"""One gpucr checkpoint of a container at a time: the flock across processes, dropped when its holder dies, and
the CRIU front's lease also reported as busy (real files and processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nri_plugin.ckpt.container_lock import CheckpointBusy, busy_reason, held
from nri_plugin.ckpt.lease import Lease, LeaseStore
from nri_plugin.host.proc import start_time

HOLD = ("import sys, time; from pathlib import Path; from nri_plugin.ckpt.container_lock import held\n"
        "with held(Path(sys.argv[1]), 'c1'):\n    print('held', flush=True); time.sleep(60)\n")


def test_a_second_holder_is_refused_until_the_first_dies(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                         cwd=Path(__file__).resolve().parents[2])
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "held"
        assert busy_reason(tmp_path, "c1") == f"a gpucr checkpoint (pid {p.pid}) holds its checkpoint lock"
        assert busy_reason(tmp_path, "c2") == ""
        with pytest.raises(CheckpointBusy, match=f"container web is being checkpointed now by gpucr pid {p.pid}"):
            with held(tmp_path, "c1", "container web"):
                pass
    finally:
        p.kill()
        p.wait()
        assert p.stdout is not None
        p.stdout.close()
    assert busy_reason(tmp_path, "c1") == ""  # the kernel dropped the dead holder's lock
    with held(tmp_path, "c1"):
        assert busy_reason(tmp_path, "c1").startswith("a gpucr checkpoint")
    assert oct((tmp_path / "checkpoint-locks").stat().st_mode & 0o777) == oct(0o700)


def test_a_live_front_lease_on_the_container_is_busy(tmp_path: Path) -> None:
    store = LeaseStore(tmp_path)
    store.write(Lease(id="l1", holder="criu front", holder_pid=os.getpid(), holder_start=start_time(os.getpid()),
                      what="container c1", container_id="c1", phase="criu-dump"))
    assert busy_reason(tmp_path, "c1") == f"criu front (pid {os.getpid()}) is in phase criu-dump of a checkpoint"
    assert busy_reason(tmp_path, "c2") == ""


def test_bad_container_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="not usable as a file name"):
        with held(tmp_path, "../x"):
            pass
