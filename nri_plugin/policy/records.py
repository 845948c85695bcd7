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

__all__ = ["RECORD_FORMAT", "ContainerRecord", "RecordError", "RecordMissingError", "RecordedGpus", "RecordedPolicy",
           "load_record", "record_path", "remove_record", "write_record"]

RECORD_FORMAT = 1
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RecordError(GpucrError):
    """A state-dir record is missing, unreadable, corrupt or of another format."""


class RecordMissingError(RecordError):
    """No record: the plugin did not see this container's creation."""


@dataclass(frozen=True)
class RecordedPolicy:
    """The container's checkpoint policy as decided at creation: the CUDA lock timeout, the GPU UUID map for a
    restore, and the annotation (or node key) each value came from."""

    lock_timeout_ms: int | None = None
    gpu_map: tuple[tuple[str, str], ...] = ()
    source: dict[str, str] = field(default_factory=dict)
    #: gpucr.io/phase-timeouts: (phase, seconds), capped by the node when a checkpoint uses them
    phase_timeouts: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, d: dict[str, Any]) -> RecordedPolicy:
        """From the record's JSON. Raises TypeError/ValueError for a malformed entry."""
        lock = d.get("lock_timeout_ms")
        return cls(int(lock) if lock is not None else None, tuple((str(a), str(b)) for a, b in d.get("gpu_map") or ()),
                   {str(k): str(v) for k, v in (d.get("source") or {}).items()},
                   tuple((str(a), int(b)) for a, b in d.get("phase_timeouts") or ()))


@dataclass(frozen=True)
class RecordedGpus:
    """The GPUs the container asked for at creation (``visible``: NVIDIA_VISIBLE_DEVICES), and why it is a GPU one."""

    visible: str = ""
    devices: tuple[str, ...] = ()
    cdi: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    @classmethod
    def of(cls, d: dict[str, Any]) -> RecordedGpus:
        """From the record's JSON. Raises TypeError/ValueError for a malformed entry."""
        return cls(str(d.get("visible") or ""), *(tuple(str(x) for x in d.get(k) or ()) for k in
                                                   ("devices", "cdi", "reasons")))


@dataclass
class ContainerRecord:
    container_id: str
    name: str
    pod_id: str
    pod_name: str
    pod_namespace: str
    managed: bool
    reason: str
    gpus: RecordedGpus = field(default_factory=RecordedGpus)
    policy: RecordedPolicy = field(default_factory=RecordedPolicy)
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
        raise RecordMissingError(f"no gpucr record for container {container_id} ({path}): the plugin did not see its "
                          "creation (down, or missed its deadline)") from None
    except (OSError, ValueError) as exc:
        raise RecordError(f"gpucr record {path} is unreadable or corrupt ({exc}); remove it, gpucr then applies "
                          "the node policy") from exc
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise RecordError(f"gpucr record {path} has format {data.get('format') if isinstance(data, dict) else '?'}"
                          f", expected {RECORD_FORMAT}; remove it, gpucr then applies the node policy")
    try:
        data["gpus"] = RecordedGpus.of(data.get("gpus") or {})
        data["policy"] = RecordedPolicy.of(data.get("policy") or {})
        rec = ContainerRecord(**data)
    except (TypeError, ValueError, AttributeError) as exc:
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
