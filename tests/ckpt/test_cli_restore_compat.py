"""``gpucr restore DIR`` of a checkpoint dumped by a newer CRIU or on a newer kernel than this node's: refused with one
error line naming the checkpoint, the step, both versions and the fix, before CRIU runs or the driver is asked, the
checkpoint untouched; with ``restore_allow_older_kernel = true`` the kernel case restores, and the CRIU case restores
once its record is put back (the check is what refused). The same check as gpucr.io/restore-from
(tests/front/test_restore_compat.py).

The checkpoint is a real one (`gpucr checkpoint` of a fake-CUDA tree, through the rig's CRIU, which the node config
names as ``criu_path``), whose ``gpucr.json`` then claims other versions (``gpucr.json`` is not in its own manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.ckpt.layout import Metadata
from tests.ckpt.test_cli_checkpoint import gpucr, one_error_line, summary
from tests.fakes.cuda import FakeCuda, FakeWorkload, fake_cuda, fake_cuda_lib  # noqa: F401 (fixtures)
from tests.testenv import CRIU, node_config, wait_for

pytestmark = pytest.mark.criu

#: the driver and NVML gpucr would load for the refused restores: loading either would fail with another error, so
#: the version error proves the check came before any CUDA or NVML call
NO_DRIVER = {"GPUCR_LIBCUDA": "/nonexistent/libcuda.so.1", "GPUCR_LIBNVML": "/nonexistent/libnvidia-ml.so.1"}


def _digest(path: Path) -> str:
    """Every file's name, mode and bytes under ``path``."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(f"{p.relative_to(path)} {os.lstat(p).st_mode:o}".encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", ["criu", "kernel"])
def test_newer_criu_or_kernel_is_refused_before_criu_runs(criu_binary: str, fake_cuda: FakeCuda,  # noqa: F811
                                                          tmp_path: Path, case: str) -> None:
    # the CRIU is the config's criu_path (the rig's), not a --criu/GPUCR_CRIU override
    env = {"GPUCR_CRIU": "", **node_config(tmp_path)}
    (tmp_path / "allow").mkdir()
    allow = {"GPUCR_CRIU": "", **node_config(tmp_path / "allow", checkpoint_root=str(tmp_path),
                                             state_dir=str(tmp_path / "state"), restore_allow_older_kernel=True)}
    w = FakeWorkload(fake_cuda, tmp_path, nproc=2)
    try:
        ck = tmp_path / "ck"
        w.advancing()
        gpucr("checkpoint", "--pid", str(w.root), "--to", str(ck), env=env)
        at_dump = w.counters()
        w.proc.wait(10)  # our child: reap it so its pid is free for the restore
        wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in w.pids), what="the dumped tree to be gone")
        meta = ck / "gpucr.json"
        recorded = meta.read_bytes()
        here, kernel = cli_version(str(CRIU)), os.uname().release
        m = Metadata.from_json(recorded.decode())
        assert (m.criu_version, m.kernel_release) == (here, kernel), m
        claim = {"criu_version": "99.0"} if case == "criu" else {"kernel_release": "99.0.0-gpucr-test"}
        meta.write_text(json.dumps({**json.loads(recorded), **claim}))
        assert all(getattr(Metadata.from_json(meta.read_text()), k) == v for k, v in claim.items())
        digest = _digest(ck)

        line = one_error_line(gpucr("restore", str(ck), env={**env, **NO_DRIVER}, check=False), "restore")
        assert f"checkpoint {ck} is not compatible with this node (step compatibility): the checkpoint was " in line
        if case == "criu":
            assert (f"dumped by CRIU 99.0 and this node's CRIU ({CRIU}) is {here}, older: install gpucr-criu or a "
                    "CRIU >= 99.0 (criu_path in /etc/gpucr/config.toml names the one gpucr uses)") in line, line
        else:
            assert (f"dumped on kernel 99.0.0-gpucr-test and this node runs kernel {kernel}, older: restore on a node "
                    "with kernel >= 99.0, or set restore_allow_older_kernel = true in /etc/gpucr/config.toml to "
                    "accept it") in line, line
        assert not (ck / "images" / "restore.log").exists()  # CRIU never ran
        assert _digest(ck) == digest and not any(os.path.exists(f"/proc/{p}") for p in w.pids)
        leases = tmp_path / "state" / "leases"
        assert not leases.exists() or not any(leases.iterdir())  # no lease taken for it

        if case == "criu":  # the CRIU it would run, named by GPUCR_CRIU (as by --criu), does not answer: refused too
            line = one_error_line(gpucr("restore", str(ck), env={**env, **NO_DRIVER, "GPUCR_CRIU": "/nonexistent/criu"},
                                        check=False), "restore")
            assert (f"checkpoint {ck}: the checkpoint was dumped by CRIU 99.0 and this node's CRIU version is unknown: "
                    "cannot run criu '/nonexistent/criu'") in line, line
            assert not (ck / "images" / "restore.log").exists() and _digest(ck) == digest

        r = gpucr("restore", str(ck), "--json", env=allow, check=case == "kernel")
        if case == "criu":  # the node's kernel setting does not accept an older CRIU
            assert "dumped by CRIU 99.0" in one_error_line(r, "restore") and _digest(ck) == digest
            meta.write_bytes(recorded)  # the record put back: the same checkpoint restores
            r = gpucr("restore", str(ck), "--json", env=env)
        assert sorted(p["pid"] for p in summary(r)["cuda_processes"]) == sorted(w.pids)
        assert all(fake_cuda.state(p) == "RUNNING" for p in w.pids)
        after = w.advancing()
        assert all(at_dump[n] <= after[n] <= at_dump[n] + 100 for n in at_dump), (at_dump, after)
    finally:
        w.kill()
