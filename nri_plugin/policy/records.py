"""Per-container records in gpucr's state dir: what the plugin decided, for the CRIU front to read at dump time.

One JSON file per container (``<state_dir>/containers/<id>.json``, dir 0700, file 0600), written atomically. The
front must not trust a record blindly: containerd creates containers *without* the plugin's adjustments when the
plugin is down or late, and a record can outlive its container. So :func:`load_record` validates the format and says
precisely what is wrong (missing, corrupt, other format), and the caller decides (node policy, safe by default).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["RECORD_FORMAT", "ContainerRecord", "RecordError", "load_record", "record_path", "remove_record",
           "write_record"]

RECORD_FORMAT = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RecordError(GpucrError):
    """A state-dir record is missing, unreadable, corrupt or of another format."""


@dataclass
class ContainerRecord:
    container_id: str
    name: str
    pod_id: str
    pod_name: str
    pod_namespace: str
    managed: bool
    reason: str
    gpus: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    criu_config: str = ""
    runtime: str = ""
    created_at: float = 0.0
    pid: int = 0
    cgroup: str = ""
    format: int = RECORD_FORMAT

    def describe(self) -> str:
        return f"container {self.name or self.container_id[:12]} in pod {self.pod_namespace}/{self.pod_name}"


def record_path(state_dir: Path, container_id: str) -> Path:
    if not _ID.match(container_id):
        raise RecordError(f"invalid container id {container_id!r} for a state record")
    return state_dir / "containers" / f"{container_id}.json"


def write_record(state_dir: Path, rec: ContainerRecord) -> Path:
    """Write (or replace) a record atomically; creates the state dir 0700."""
    path = record_path(state_dir, rec.container_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)
    os.chmod(path.parent, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(rec), f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_record(state_dir: Path, container_id: str) -> ContainerRecord:
    """Raises RecordError naming the file and what is wrong with it."""
    path = record_path(state_dir, container_id)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"no gpucr record for container {container_id} ({path}): the plugin did not see its "
                          "creation (down, or missed its deadline)") from None
    except (OSError, ValueError) as exc:
        raise RecordError(f"gpucr record {path} is unreadable or corrupt ({exc}); remove it, gpucr then applies "
                          "the node policy") from exc
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise RecordError(f"gpucr record {path} has format {data.get('format') if isinstance(data, dict) else '?'}"
                          f", expected {RECORD_FORMAT}; remove it, gpucr then applies the node policy")
    try:
        rec = ContainerRecord(**data)
    except TypeError as exc:
        raise RecordError(f"gpucr record {path} is corrupt ({exc}); remove it") from exc
    if rec.container_id != container_id:
        raise RecordError(f"gpucr record {path} belongs to container {rec.container_id}, not {container_id}")
    return rec


def remove_record(state_dir: Path, container_id: str) -> bool:
    try:
        record_path(state_dir, container_id).unlink()
        return True
    except FileNotFoundError:
        return False
