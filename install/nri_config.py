"""``gpucr setup``'s NRI step: make sure containerd's NRI plugin is enabled, and undo exactly that.

containerd 1.7 ships NRI disabled (``[plugins."io.containerd.nri.v1.nri"] disable = true`` by default); 2.x enables
it by default. Enable, in order of preference:
  * nothing to do: the config already enables it (version 2 schema: ``disable = false`` written; version 3: not
    ``disable = true``);
  * a drop-in, when the config ``imports`` a glob such as ``/etc/containerd/conf.d/*.toml``: ``gpucr-nri.toml`` there
    holds the config's NRI table with ``disable = false`` (containerd replaces a plugin's whole table with an imported
    one, so the table's other keys are carried over);
  * the smallest edit of the config: the one ``disable`` line (or the table, appended), checked with tomllib to change
    that value only, a copy of the file kept for revert.
Revert removes the drop-in or restores the copy byte for byte, and refuses (one line, file untouched) when the file
was edited since. Standard library only; run by ``gpucr setup`` as ``python3 -S -E install/nri_config.py``::

    enable CONFIG STATE_DIR      print what was done; STATE_DIR/nri.json records it
    revert CONFIG STATE_DIR
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import glob
import json
import os
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any

from runtime_config import InstallError, _sha, _write_atomic, header_key

NRI = "io.containerd.nri.v1.nri"
DROP_IN = "gpucr-nri.toml"
STATE = "nri.json"


def _needs_enable(doc: dict[str, Any]) -> bool:
    table = doc.get("plugins", {}).get(NRI, {})
    if doc.get("version", 1) == 2:
        return table.get("disable") is not False
    return table.get("disable") is True


def _header(version: int) -> str:
    return f'[plugins."{NRI}"]' if version == 2 else f"[plugins.'{NRI}']"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    raise InstallError(f"the NRI table holds a value gpucr does not copy into a drop-in ({v!r})")


def _drop_in_dir(doc: dict[str, Any], config: Path) -> Path | None:
    """The directory of an ``imports`` glob that a file named gpucr-nri.toml would match."""
    for pattern in doc.get("imports", []) or []:
        if not isinstance(pattern, str):
            continue
        p = pattern if os.path.isabs(pattern) else str(config.parent / pattern)
        if glob.has_magic(os.path.dirname(p)) or not fnmatch.fnmatch(DROP_IN, os.path.basename(p)):
            continue
        return Path(os.path.dirname(p))
    return None


def edit(text: str, path: str) -> str:
    """The config text with NRI enabled, changing only ``disable`` of the NRI table. Raises InstallError."""
    doc = tomllib.loads(text)
    version = doc.get("version", 1)
    want = ["plugins", NRI]
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if header_key(ln) == want), None)
    if start is None:
        if NRI in doc.get("plugins", {}):
            raise InstallError(f"{path}: the NRI plugin's settings are not written as a {_header(version)} table; "
                               "set disable = false there by hand")
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        lines += ["\n", f"{_header(version)}\n", "  disable = false\n"]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        at = next((i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == "disable"), None)
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())] + "  "
        if at is None:
            lines.insert(start + 1, f"{indent}disable = false\n")
        else:
            ind = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
            lines[at] = f"{ind}disable = false\n"
    out = "".join(lines)
    expected = copy.deepcopy(doc)
    expected.setdefault("plugins", {}).setdefault(NRI, {})["disable"] = False
    try:
        got = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"enabling NRI in {path} gave invalid TOML ({exc}); file unchanged: set disable = false "
                           f"in its {_header(version)} table by hand") from exc
    if got != expected:
        raise InstallError(f"enabling NRI in {path} would change more than its disable key; file unchanged: set "
                           f"disable = false in its {_header(version)} table by hand")
    return out


def enable(config: Path, state_dir: Path) -> str:
    state = state_dir / STATE
    if state.exists():
        return "NRI: already handled by an earlier gpucr setup (unchanged)"
    before = config.read_bytes()
    try:
        doc = tomllib.loads(before.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InstallError(f"{config} is not valid TOML ({exc}); fix it first") from exc
    version = doc.get("version", 1)
    if version not in (2, 3):
        raise InstallError(f"{config} is a version {version} containerd config; gpucr setup handles version 2 "
                           "(containerd 1.7) and 3 (2.x): convert it with `containerd config migrate`")
    record: dict[str, Any] = {"format": 1, "config": str(config)}
    if not _needs_enable(doc):
        record["action"] = "none"
        msg = f"NRI: already enabled in {config} (unchanged)"
    elif (d := _drop_in_dir(doc, config)) is not None:
        drop = d / DROP_IN
        if drop.exists():
            raise InstallError(f"{drop} exists and was not written by this gpucr setup: remove it or enable NRI by hand")
        table = dict(doc.get("plugins", {}).get(NRI, {}))
        table["disable"] = False
        body = "".join(f"  {k} = {_value(v)}\n" for k, v in table.items())
        data = (f"# written by gpucr setup --apply (removed by gpucr setup --revert): containerd's NRI enabled\n"
                f"version = {version}\n\n{_header(version)}\n{body}").encode()
        made_dir = not d.exists()
        if made_dir:
            d.mkdir(mode=0o755, parents=True)
        _write_atomic(drop, data, 0o644, 0, 0)
        record.update(action="drop-in", path=str(drop), sha256=_sha(data), made_dir=str(d) if made_dir else None)
        msg = f"NRI: enabled by the drop-in {drop} ({config} imports it; the config itself is unchanged)"
    else:
        after = edit(before.decode(), str(config)).encode()
        meta = os.stat(config)
        backup = state_dir / "config.before-nri"
        _write_atomic(backup, before, 0o600, 0, 0)
        record.update(action="edit", backup=str(backup), sha256_before=_sha(before), sha256_after=_sha(after),
                      mode=stat.S_IMODE(meta.st_mode), uid=meta.st_uid, gid=meta.st_gid)
        _write_atomic(state, json.dumps(record, indent=1).encode() + b"\n", 0o600, 0, 0)
        _write_atomic(config, after, record["mode"], meta.st_uid, meta.st_gid)
        return f"NRI: enabled in {config} (disable = false in its NRI table; a copy of the file is in {backup})"
    _write_atomic(state, json.dumps(record, indent=1).encode() + b"\n", 0o600, 0, 0)
    return msg


def revert(config: Path, state_dir: Path) -> str:
    state = state_dir / STATE
    try:
        rec = json.loads(state.read_text())
    except FileNotFoundError:
        return "NRI: nothing recorded (unchanged)"
    action = rec.get("action")
    if action == "drop-in":
        drop = Path(rec["path"])
        if drop.exists():
            if _sha(drop.read_bytes()) != rec["sha256"]:
                raise InstallError(f"{drop} was edited since gpucr setup wrote it: not removing it; remove it by hand "
                                   f"(and {state}) if NRI should be disabled again")
            drop.unlink()
        if rec.get("made_dir"):
            try:
                os.rmdir(rec["made_dir"])
            except OSError:
                pass
        msg = f"NRI: drop-in {drop} removed"
    elif action == "edit":
        now = config.read_bytes()
        if _sha(now) == rec["sha256_after"]:
            data = Path(rec["backup"]).read_bytes()
            if _sha(data) != rec["sha256_before"]:
                raise InstallError(f"the copy {rec['backup']} does not match the config gpucr setup edited: config "
                                   "left as it is; set disable back in the NRI table by hand")
            _write_atomic(config, data, rec["mode"], rec["uid"], rec["gid"])
            os.unlink(rec["backup"])
            msg = f"NRI: {config} restored (byte-identical to before gpucr setup)"
        elif _sha(now) == rec["sha256_before"]:
            msg = f"NRI: {config} is already as it was before gpucr setup (unchanged)"
        else:
            raise InstallError(f"{config} was edited since gpucr setup enabled NRI in it: not overwriting those "
                               f"edits. Fix: set the NRI table's disable back by hand (the file as it was is "
                               f"{rec['backup']}), then run gpucr setup --revert again")
    else:
        msg = f"NRI: {config} was left as it was (nothing to revert)"
    state.unlink()
    return msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="install/nri_config.py", description=__doc__.split("\n", 1)[0])
    ap.add_argument("cmd", choices=["enable", "revert"])
    ap.add_argument("config", type=lambda p: Path(os.path.realpath(p)))
    ap.add_argument("state_dir", type=Path)
    a = ap.parse_args(argv)
    try:
        print(f"gpucr setup: {(enable if a.cmd == 'enable' else revert)(a.config, a.state_dir)}", file=sys.stderr)
    except InstallError as exc:
        print(f"gpucr setup: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gpucr setup: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
