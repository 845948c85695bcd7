"""A FrontHooks implementation for the integration tests, loaded by the real front inside runc
(``hooks = tests.front.recording_hooks:make`` in front.conf).

It appends one JSON line per hook call to ``record_to``: at the DUMP request the freezer state (THAWED / FREEZING /
FROZEN, v1 or v2 as the product's cgroup module reads it) of ``freeze_cgroup`` and the State of the dumped pid. With
``thaw_for_s`` it does what a CUDA lock needs: thaw, wait, record the tasks running, re-freeze; with
``fail_before_dump`` it
raises a HookError with that text, which must abort the dump and leave the container running; ``fail_at_notify``
names a notification at which it raises (CRIU is then told the notify failed).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from nri_plugin.front.errors import HookError
from nri_plugin.front.messages import Request
from nri_plugin.host.cgroup import CgroupError
from tests import cgroups


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _task_state(pid: int | None) -> str | None:
    if not pid:
        return None
    text = _read(Path(f"/proc/{pid}/status")) or ""
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("State:")), None)


def _freezer(cg: str | None) -> str | None:
    """THAWED / FREEZING / FROZEN of the cgroup directory runc named, through the product's cgroup module."""
    if not cg:
        return None
    try:
        return cgroups.state(cgroups.freezer_dir(cg))
    except CgroupError:
        return None


def _set_freezer(cg: str, state: str) -> None:
    f = cgroups.freezer_dir(cg)
    try:
        f.freeze(5) if state == "FROZEN" else f.thaw(5)
    except CgroupError as exc:
        raise HookError(f"freezer {cg} did not reach {state} (now {_freezer(cg)}): {exc}") from exc


def _last_value(path: str | None) -> str | None:
    """Last complete line of an append-only counter log."""
    text = _read_raw(Path(path)) if path else None
    if text is None:
        return None
    lines = text.split("\n")[:-1]
    return lines[-1] if lines else None


def _read_raw(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


class Recording:
    def __init__(self, values: dict[str, str]) -> None:
        self.out = Path(values["record_to"])
        self.thaw_for_s = float(values.get("thaw_for_s", "0"))
        self.fail = values.get("fail_before_dump")
        self.counter = values.get("counter_file")
        self.fail_notify = values.get("fail_at_notify")

    def _rec(self, **kw: Any) -> None:
        with self.out.open("a") as f:
            f.write(json.dumps({"front_pid": os.getpid(), **kw}) + "\n")

    def wants(self, request: Request) -> bool:
        return True

    def before_dump(self, request: Request) -> None:
        rec: dict[str, Any] = {"point": "before_dump", "pid": request.pid, "freeze_cgroup": request.freeze_cgroup,
                               "leave_running": request.leave_running, "freezer": _freezer(request.freeze_cgroup),
                               "task_state": _task_state(request.pid), "images_dir": request.images_dir,
                               "peer_pid": request.peer_pid}
        if self.thaw_for_s and request.freeze_cgroup and rec["freezer"] == "FROZEN":
            before = _last_value(self.counter)
            _set_freezer(request.freeze_cgroup, "THAWED")
            time.sleep(self.thaw_for_s)
            rec["thawed_task_state"] = _task_state(request.pid)
            rec["counter_while_thawed"] = [before, _last_value(self.counter)]
            _set_freezer(request.freeze_cgroup, "FROZEN")
            rec["refrozen"] = _freezer(request.freeze_cgroup)
        self._rec(**rec)
        if self.fail:
            raise HookError(self.fail)

    def on_notify(self, request: Request, name: str, pid: int | None) -> None:
        self._rec(point="notify", name=name, pid=pid, type=request.type_name, task_state=_task_state(pid))
        if self.fail_notify == name:
            raise HookError(f"test hook refused at {name}")

    def after_response(self, request: Request, success: bool) -> None:
        self._rec(point="after", type=request.type_name, success=success)


def make(values: dict[str, str]) -> Recording:
    return Recording(values)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
