"""What gpucr does at a managed container's OCI hooks (injected by the NRI plugin at creation).

* createRuntime: the container's init now exists; record its host pid and cgroup in the state record, so the CRIU
  front can match a dump request (a pid) to this container without asking the runtime.
* poststop: the container is gone; remove its state record (its CRIU config file stays for restores).

The OCI runtime passes the container state (``ociVersion``, ``id``, ``status``, ``pid``, ``bundle``,
``annotations``) as JSON on the hook's stdin (OCI runtime-spec, "State"). Hooks must never fail a container for
bookkeeping: errors are reported to the caller, which logs them and exits 0 unless told otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..host.proc import cgroup_path
from ..policy.records import RecordError, load_record, remove_record, write_record

__all__ = ["HookState", "on_create_runtime", "on_poststop", "parse_state"]


@dataclass(frozen=True)
class HookState:
    id: str
    pid: int
    status: str
    bundle: str
    annotations: dict[str, str]


def parse_state(raw: str | bytes) -> HookState:
    """Parse the OCI state JSON from the hook's stdin. Raises ValueError naming what is missing."""
    try:
        data: Any = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"OCI hook state on stdin is not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
        raise ValueError("OCI hook state on stdin has no container id")
    return HookState(id=data["id"], pid=int(data.get("pid") or 0), status=str(data.get("status", "")),
                     bundle=str(data.get("bundle", "")), annotations=dict(data.get("annotations") or {}))


def on_create_runtime(state: HookState, state_dir: Path) -> str:
    """Record pid and cgroup of a managed container. Returns a one-line summary for the log."""
    rec = load_record(state_dir, state.id)
    rec.pid = state.pid
    rec.cgroup = cgroup_path(state.pid)
    if not rec.cgroup:
        raise RecordError(f"container {state.id}: cannot read the cgroup of pid {state.pid} (/proc/{state.pid}/cgroup "
                          "is gone or malformed)")
    write_record(state_dir, rec)
    return f"{rec.describe()}: pid {rec.pid}, cgroup {rec.cgroup}"


def on_poststop(state: HookState, state_dir: Path) -> str:
    """Forget a container's record. Idempotent. Its CRIU config file stays: a restore of one of its checkpoints
    reads it again (the daemon writes those files content-addressed, shared by containers with the same policy)."""
    removed = remove_record(state_dir, state.id)
    return f"container {state.id}: record {'removed' if removed else 'already gone'}"
