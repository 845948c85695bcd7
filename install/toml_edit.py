"""The part of gpucr's containerd-config edits that install/runtime_config.py (a runtime handler's ``BinaryName``),
install/nri_config.py (NRI's ``disable``) and install/config_prep.py (a config made editable) share: set one key of
one ``[table]`` with the smallest change of the text, proven by tomllib to change that value only; write files
atomically; keep a copy of an edited config and restore it byte for byte (or remove a file gpucr wrote) on revert;
report errors as one line.

Standard library only, imported by those scripts from their own directory (they run as ``python3 -S -E``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import stat
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class InstallError(Exception):
    """Bad input for the edit: the message says what and the fix."""


def header_key(line: str) -> list[str] | None:
    """The dotted key of a ``[table]`` header line, quotes removed; None for any other line (``[[array]]`` too)."""
    s = line.strip()
    if not s.startswith("[") or s.startswith("[["):
        return None
    keys: list[str] = []
    cur, quote, i = "", "", 1
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(s):
                cur, i = cur + s[i + 1], i + 2
                continue
            if c == quote:
                quote = ""
            else:
                cur += c
        elif c in "\"'":
            quote = c
        elif c == ".":
            keys.append(cur.strip())
            cur = ""
        elif c == "]":
            keys.append(cur.strip())
            return keys
        else:
            cur += c
        i += 1
    return None


def render_key(keys: list[str], version: int) -> str:
    """A dotted key as containerd writes it: bare where it can be, else quoted ('' in version 3 configs, "" in 2)."""
    q = '"' if version == 2 else "'"
    return ".".join(k if _BARE_KEY.match(k) else f"{q}{k}{q}" for k in keys)


def dig(doc: Any, keys: list[str]) -> Any:
    """``doc[k1][k2]...``; None where a key is missing or a value on the way is not a table."""
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def literal(v: Any) -> str | None:
    """``v`` as a TOML value (booleans, numbers, strings, lists of strings); None for anything else."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return None


def set_key(text: str, doc: dict[str, Any], table: list[str], key: str, value: Any, *, version: int,
            not_a_table: str, what: str, fix: str, named: str | None = None) -> str:
    """``text`` (parsed: ``doc``) with ``key = value`` in its ``[table]``: the key's line replaced (keeping its
    indent) or inserted first in the table (indented as the table's first line, else two spaces under the header),
    or the table appended when the config has none. The result is parsed again and must differ from ``doc`` in that
    one value only.

    Raises:
        InstallError: ``not_a_table`` when ``table`` exists but not as a ``[table]`` header (inline or dotted keys);
            ``"{what} gave invalid TOML (...); file unchanged: {fix}"`` or ``"{what} would change more than its
            {named or key}; file unchanged: {fix}"`` when the edit would not be exactly that.
    """
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if header_key(ln) == table), None)
    line_of_key = re.compile(rf"""^\s*({re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    new = f"{key} = {literal(value)}\n"
    if start is None:
        if dig(doc, table) is not None:
            raise InstallError(not_a_table)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", f"[{render_key(table, version)}]\n", f"  {new}"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        body = [i for i in range(start + 1, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")]
        at = next((i for i in body if line_of_key.match(lines[i])), None)
        if at is not None:
            lines[at] = _indent(lines[at]) + new
        else:
            lines.insert(start + 1, (_indent(lines[body[0]]) if body else _indent(lines[start]) + "  ") + new)
    out = "".join(lines)
    expected = copy.deepcopy(doc)
    node = expected
    for k in table:
        node = node.setdefault(k, {})
    node[key] = value
    try:
        got = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{what} gave invalid TOML ({exc}); file unchanged: {fix}") from exc
    if got != expected:
        raise InstallError(f"{what} would change more than its {named or key}; file unchanged: {fix}")
    return out


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Replace ``path`` with ``data`` (owner, mode) durably: a temporary file beside it, fsync, rename, fsync the
    directory."""
    tmp = path.with_name(f".{path.name}.gpucr-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_record(state: Path, record: dict[str, Any]) -> None:
    """The record of what a step did (what its revert reads), written durably, private to root."""
    write_atomic(state, json.dumps(record, indent=1).encode() + b"\n", 0o600, 0, 0)


def edit_keeping_copy(config: Path, before: bytes, after: bytes, backup: Path, state: Path,
                      record: dict[str, Any]) -> None:
    """Replace ``config`` (now ``before``) with ``after``, keeping what :func:`restore_copy` needs: ``before`` in
    ``backup`` and ``record`` (``action = "edit"``, the two hashes, the file's mode and owner) in ``state``, both
    written before the config changes."""
    meta = os.stat(config)
    write_atomic(backup, before, 0o600, 0, 0)
    record.update(action="edit", backup=str(backup), sha256_before=sha256(before), sha256_after=sha256(after),
                  mode=stat.S_IMODE(meta.st_mode), uid=meta.st_uid, gid=meta.st_gid)
    write_record(state, record)
    write_atomic(config, after, record["mode"], meta.st_uid, meta.st_gid)


def restore_copy(config: Path, record: dict[str, Any], *, did: str, undo: str) -> str:
    """Undo what :func:`edit_keeping_copy` recorded: ``config`` restored byte for byte from the copy while it is still
    exactly what the edit wrote (the copy then removed), or left when it is already as it was. Returns what was done,
    starting with the config's path.

    Raises:
        InstallError: the config was edited since, or the copy does not match what the config was; ``did`` says what
            gpucr setup did to it ("enabled NRI in it"), ``undo`` the fix by hand ("set the NRI table's disable
            back"). Nothing is written.
    """
    now = sha256(config.read_bytes())
    backup = record["backup"]
    if now == record["sha256_after"]:
        data = Path(backup).read_bytes()
        if sha256(data) != record["sha256_before"]:
            raise InstallError(f"the copy {backup} does not match what {config} was before gpucr setup {did}: config "
                               f"left as it is; {undo} by hand")
        write_atomic(config, data, record["mode"], record["uid"], record["gid"])
        os.unlink(backup)
        return f"{config} restored (byte-identical to before gpucr setup)"
    if now == record["sha256_before"]:
        return f"{config} is already as it was before gpucr setup (unchanged)"
    raise InstallError(f"{config} was edited since gpucr setup {did}: not overwriting those edits. Fix: {undo} by hand "
                       f"(the file as it was is {backup}), then run gpucr setup --revert again")


def remove_written(path: Path, digest: str, made_dirs: list[str], *, did: str, fix: str) -> None:
    """Remove the file gpucr setup wrote at ``path`` (SHA-256 ``digest``), then the directories it made for it
    (outermost first in ``made_dirs``; one that is not empty stays). Gone already: nothing to remove.

    Raises:
        InstallError: the file was edited since (``did``: what gpucr setup did, "created it"; ``fix``: how to
            remove it by hand); nothing is removed.
    """
    if path.exists():
        if sha256(path.read_bytes()) != digest:
            raise InstallError(f"{path} was edited since gpucr setup {did}: not removing it; {fix}")
        path.unlink()
    for d in reversed(made_dirs):
        try:
            os.rmdir(d)
        except OSError:
            pass


def run(prog: str, action: Callable[[], None]) -> int:
    """Run a command's ``action``; its InstallError or OSError becomes one ``{prog}: error:`` line and exit status 1."""
    try:
        action()
    except InstallError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
