"""The daemon's status file: follows the registration state, is removed on exit, and is trusted only while its pid
lives."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from nri_plugin.handlers.plugin_status import STATUS_NAME, publish, read_status


def test_publish_follows_registration(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        ev = asyncio.Event()
        task = asyncio.create_task(publish(ev, tmp_path / "state", {"socket": "/x.sock"}, poll_s=0.01))
        seen = []
        await asyncio.sleep(0.05)
        seen.append(json.loads((tmp_path / "state" / STATUS_NAME).read_text())["registered"])
        ev.set()
        await asyncio.sleep(0.05)
        rec = read_status(tmp_path / "state")
        assert rec is not None and rec["pid"] == os.getpid() and rec["socket"] == "/x.sock"
        seen.append(rec["registered"])
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return seen

    assert asyncio.run(scenario()) == [False, True]
    assert not (tmp_path / "state" / STATUS_NAME).exists()
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


def test_a_dead_daemons_status_is_ignored(tmp_path: Path) -> None:
    (tmp_path / STATUS_NAME).write_text(json.dumps({"pid": 2 ** 22 + 1, "registered": True}))
    assert read_status(tmp_path) is None
    (tmp_path / STATUS_NAME).write_text("{")
    assert read_status(tmp_path) is None
