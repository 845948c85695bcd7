"""gpucr's pod and container annotations (``gpucr.io/...``): parsing and validation.

A container annotation wins over the pod's. Every key under ``gpucr.io/`` is checked: an unknown key or a bad value
is an :class:`AnnotationError` naming the annotation and the accepted values (the caller fails the creation, or warns
when the node says so). Pure: strings in, a frozen :class:`ContainerPolicy` out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..errors import GpucrError

__all__ = ["PREFIX", "ANNOTATIONS", "AnnotationError", "ContainerPolicy", "parse_annotations"]

PREFIX = "gpucr.io/"
_NAME_PART = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class AnnotationError(GpucrError):
    """A ``gpucr.io/`` annotation is unknown or has a bad value."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _bool(v: str) -> bool:
    if v.lower() in ("true", "yes", "1", "on"):
        return True
    if v.lower() in ("false", "no", "0", "off"):
        return False
    raise ValueError("true or false")


def _enabled(v: str) -> bool:
    if v == "enabled":
        return True
    if v == "disabled":
        return False
    raise ValueError('"enabled" or "disabled"')


def _seconds(v: str) -> int:
    n = int(v) if v.isdigit() else -1
    if not 1 <= n <= 86_400:
        raise ValueError("a whole number of seconds from 1 to 86400")
    return n


def _millis(v: str) -> int:
    n = int(v) if v.isdigit() else -1
    if not 1 <= n <= 3_600_000:
        raise ValueError("a whole number of milliseconds from 1 to 3600000")
    return n


def _gpu_map(v: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (p.strip() for p in v.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old.startswith("GPU-") or not new.startswith("GPU-"):
            raise ValueError("a comma-separated list of OLD=NEW GPU UUIDs (GPU-xxxxxxxx-...=GPU-yyyyyyyy-...)")
        pairs.append((old, new))
    if not pairs:
        raise ValueError("at least one OLD=NEW GPU UUID pair")
    return tuple(pairs)


def _checkpoint_name(v: str) -> str:
    """A checkpoint under the node's checkpoint root, named relative to it: no absolute path, no ``..`` or hidden
    component (the plugin resolves it again and refuses symlinks that leave the root: ckpt/restore_source.py)."""
    parts = v.split("/")
    if not v or len(v) > 255 or any(not _NAME_PART.fullmatch(p) for p in parts):
        raise ValueError("the name of a checkpoint under the node's checkpoint_root: path components of letters, "
                         "digits, '.', '_' and '-', none empty or starting with '.' (no '..', no absolute path)")
    return v


_DURATION = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,6})m)?(?:(\d{1,7})s)?")
#: the longest interval of periodic checkpoints an annotation may ask for (a week)
MAX_INTERVAL_S = 7 * 86_400


def _duration(v: str) -> int:
    """``30s``, ``15m``, ``1h30m``, or a bare number of seconds -> whole seconds (1 s to a week; the node's
    ``checkpoint_interval_min_s`` is checked by the policy)."""
    m = _DURATION.fullmatch(v)
    if v.isdigit():
        n = int(v)
    elif v and m:
        h, mi, s = (int(x or 0) for x in m.groups())
        n = h * 3600 + mi * 60 + s
    else:
        n = -1
    if not 1 <= n <= MAX_INTERVAL_S:
        raise ValueError("a duration from 1s to 168h, e.g. 30s, 15m, 1h30m (or whole seconds)")
    return n


def _count(v: str) -> int:
    n = int(v) if v.isdigit() else -1
    if not 1 <= n <= 1000:
        raise ValueError("a whole number from 1 to 1000")
    return n


#: the phases of a checkpoint's critical section that ``gpucr.io/phase-timeouts`` may bound (nri_plugin/ckpt/lease.py)
PHASES = ("cuda-lock", "cuda-checkpoint", "criu-dump", "cuda-restore", "cuda-unlock")


def _phase_timeouts(v: str) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in v.split(","))):
        phase, sep, secs = item.partition("=")
        if not sep or phase.strip() not in PHASES:
            raise ValueError(f"a comma-separated list of PHASE=SECONDS, PHASE one of {', '.join(PHASES)}")
        out[phase.strip()] = _seconds(secs.strip())
    if not out:
        raise ValueError(f"at least one PHASE=SECONDS ({', '.join(PHASES)})")
    return tuple(sorted(out.items()))


#: annotation (without prefix) -> (ContainerPolicy field, parser); the parser's ValueError text is "accepted values"
ANNOTATIONS: dict[str, tuple[str, Callable[[str], object]]] = {
    "checkpoint": ("checkpoint", _enabled),
    "tcp-established": ("tcp_established", _bool),
    "file-locks": ("file_locks", _bool),
    "ext-unix-sk": ("ext_unix_sk", _bool),
    "force-irmap": ("force_irmap", _bool),
    "criu-timeout": ("criu_timeout_s", _seconds),
    "lock-timeout": ("lock_timeout_ms", _millis),
    "gpu-map": ("gpu_map", _gpu_map),
    "restore-from": ("restore_from", _checkpoint_name),
    "phase-timeouts": ("phase_timeouts", _phase_timeouts),
    "checkpoint-interval": ("checkpoint_interval_s", _duration),
    "checkpoint-keep": ("checkpoint_keep", _count),
}


@dataclass(frozen=True)
class ContainerPolicy:
    """What the annotations ask for; ``None`` means "not said" (node defaults apply)."""

    checkpoint: bool | None = None
    tcp_established: bool | None = None
    file_locks: bool | None = None
    ext_unix_sk: bool | None = None
    force_irmap: bool | None = None
    criu_timeout_s: int | None = None
    lock_timeout_ms: int | None = None
    gpu_map: tuple[tuple[str, str], ...] = ()
    #: a checkpoint (name under the node's checkpoint root) the container is restored from instead of started fresh
    restore_from: str | None = None
    #: per-phase deadlines in seconds (the node's ``*_timeout_s`` cap them)
    phase_timeouts: tuple[tuple[str, int], ...] = ()
    #: the plugin daemon checkpoints the running container this often (seconds)
    checkpoint_interval_s: int | None = None
    #: how many of its newest periodic checkpoints are kept
    checkpoint_keep: int | None = None
    #: the gpucr.io/ annotations that were read, for the record
    source: dict[str, str] = field(default_factory=dict)


def parse_annotations(pod: Mapping[str, str], container: Mapping[str, str], *, what: str = "container",
                      on_error: Callable[[AnnotationError], None] | None = None) -> ContainerPolicy:
    """Merge pod then container ``gpucr.io/`` annotations into a policy.

    Args:
        what: names the container in errors ("container web in pod default/app").
        on_error: called with each error instead of raising (the node's "warn" mode); the bad key is ignored.

    Raises:
        AnnotationError: the first unknown key or bad value, when ``on_error`` is None.
    """
    merged = {k: v for k, v in pod.items() if k.startswith(PREFIX)}
    merged.update({k: v for k, v in container.items() if k.startswith(PREFIX)})
    values: dict[str, object] = {}
    source: dict[str, str] = {}
    for key in sorted(merged):
        name, raw = key[len(PREFIX):], merged[key]
        try:
            if name not in ANNOTATIONS:
                raise AnnotationError(key, f"{what}: unknown annotation {key!r}; known gpucr annotations: "
                                           f"{', '.join(PREFIX + k for k in sorted(ANNOTATIONS))}")
            attr, parse = ANNOTATIONS[name]
            try:
                values[attr] = parse(raw.strip())
            except ValueError as exc:
                raise AnnotationError(key, f"{what}: annotation {key}={raw!r} is invalid; accepted: {exc}") from None
            source[key] = raw
        except AnnotationError as err:
            if on_error is None:
                raise
            on_error(err)
    return ContainerPolicy(**values, source=source)  # type: ignore[arg-type]
