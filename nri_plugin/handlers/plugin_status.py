"""The plugin daemon's status file, ``STATE_DIR/plugin.json``: how ``gpucr doctor`` tells that gpucr's NRI plugin is
running and registered with containerd (NRI offers no call that lists registered plugins).

Written (atomically, 0644 in the root-only state dir) each time the stub's registration state changes; removed when
the daemon exits. A reader trusts it only while ``pid`` is alive.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["STATUS_NAME", "publish", "read_status"]

STATUS_NAME = "plugin.json"


def _write(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(record) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


async def publish(registered: asyncio.Event, state_dir: Path, fields: dict[str, Any], poll_s: float = 0.5) -> None:
    """Keep ``state_dir/plugin.json`` in step with ``registered`` until cancelled, then remove it."""
    path = state_dir / STATUS_NAME
    last: bool | None = None
    try:
        while True:
            now = registered.is_set()
            if now != last:
                try:
                    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _write(path, {**fields, "pid": os.getpid(), "registered": now, "since": time.time()})
                    last = now
                except OSError:
                    pass  # the node-path checks already report an unusable state_dir
            await asyncio.sleep(poll_s)
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The status record when its daemon is alive, else None."""
    try:
        rec = json.loads((state_dir / STATUS_NAME).read_text())
        os.kill(int(rec["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rec if isinstance(rec, dict) else None
