"""handlers.lease_sweep: the daemon sweeps at start and when poked (a container event), with the plugin's current
node config; a dead holder's lease of gone processes is rolled back (no driver needed) and logged."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from nri_plugin.ckpt.lease import Lease, LeaseStore
from nri_plugin.handlers.lease_sweep import SweepingPolicyPlugin
from nri_plugin.host.proc import start_time
from nri_plugin.policy import NodeConfig


def _dead_lease(store: LeaseStore, name: str) -> None:
    p = subprocess.Popen(["true"])
    st = start_time(p.pid) or 1
    p.wait()
    store.write(Lease(id=name, holder="criu front", holder_pid=p.pid, holder_start=st, what=f"container {name}"))


def test_sweeps_at_start_and_when_poked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plugin = SweepingPolicyPlugin(NodeConfig(state_dir=tmp_path, lease_sweep_interval_s=3600.0))
    store = LeaseStore(tmp_path)
    _dead_lease(store, "first")

    async def run() -> None:
        task = asyncio.create_task(plugin.sweeper.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not store.entries():
                break
        assert not store.entries()  # swept at start
        _dead_lease(store, "second")
        await asyncio.sleep(0.2)
        assert store.entries()  # the interval is an hour: nothing until poked
        plugin.sweeper.poke()  # what create_container/remove_container do
        for _ in range(200):
            await asyncio.sleep(0.01)
            if not store.entries():
                break
        task.cancel()

    with caplog.at_level(logging.WARNING):
        asyncio.run(run())
    assert not store.entries()
    lines = [r.getMessage() for r in caplog.records if "rolled back the lease" in r.getMessage()]
    assert [ln.split(" (")[0] for ln in lines] == ["rolled back the lease of container first",
                                                  "rolled back the lease of container second"], lines
