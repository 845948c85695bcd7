"""Per-container CRIU configuration files, handed to runc through the ``org.criu.config`` annotation.

runc sends CRIU one configuration file per dump and restore: the container's ``org.criu.config`` annotation, or
``/etc/criu/runc.conf`` by default. gpucr writes its own file per managed container and points the annotation at
it, so it must *merge* what the user already had (their annotation's file, else runc.conf): the user's lines come
first and are kept verbatim; gpucr adds only options the user did not set. Format (CRIU's ``config.c``): one option
per line without the leading dashes, an optional value after whitespace, ``#`` comments.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["CriuOption", "container_dump_flags", "dump_flags", "parse_config", "merge_config", "render_config"]

#: options CRIU accepts several times (each occurrence adds); merged by exact value, not by name
_MULTI = {"external", "inherit-fd", "ext-mount-map", "veth-pair", "cgroup-root", "irmap-scan-path", "join-ns",
          "skip-mnt", "enable-fs", "action-script"}


@dataclass(frozen=True)
class CriuOption:
    name: str
    value: str | None = None
    comment: str = ""

    def render(self) -> str:
        line = self.name if self.value is None else f"{self.name} {self.value}"
        return f"{line}  # {self.comment}" if self.comment else line


def parse_config(text: str) -> list[CriuOption]:
    """Parse a CRIU config file. Leading dashes are tolerated (``--tcp-established``), comments dropped."""
    out: list[CriuOption] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, value = line.partition(" ")
        out.append(CriuOption(name.lstrip("-"), value.strip() or None))
    return out


def dump_flags(path: str) -> dict[str, bool] | None:
    """The options of the container's CRIU config ``path`` (its record's ``criu_config``) that a restore must be
    given again, by DumpOptions' names (``tcp-established`` -> ``tcp_established``); None when it is unreadable (the
    dump's options are then unknown)."""
    from pathlib import Path

    from ..ckpt.layout import DUMP_FLAGS
    if not path:
        return None
    try:
        names = {o.name for o in parse_config(Path(path).read_text())}
    except (OSError, ValueError):
        return None
    return {k: True for k in DUMP_FLAGS if k.replace("_", "-") in names}


def container_dump_flags(state_dir: str, container_id: str) -> dict[str, bool] | None:
    """:func:`dump_flags` of the CRIU config gpucr's plugin recorded for ``container_id``; None for a container it
    did not record (its dump's options are unknown here). For the runtime checkpoints' ``criu_dump`` record."""
    from .records import RecordError, load_record
    try:
        return dump_flags(load_record(state_dir, container_id).criu_config)
    except RecordError:
        return None


def merge_config(user: Sequence[CriuOption], ours: Iterable[CriuOption]) -> list[CriuOption]:
    """The user's options, then ours that the user did not already set (same name; same name+value for multi)."""
    names = {o.name for o in user}
    pairs = {(o.name, o.value) for o in user}
    merged = list(user)
    for o in ours:
        if o.name in _MULTI:
            if (o.name, o.value) in pairs:
                continue
        elif o.name in names:
            continue
        merged.append(o)
        names.add(o.name)
        pairs.add((o.name, o.value))
    return merged


def render_config(options: Sequence[CriuOption], header: str) -> str:
    lines = [f"# {ln}" if ln else "#" for ln in header.splitlines()]
    lines += [o.render() for o in options]
    return "\n".join(lines) + "\n"
