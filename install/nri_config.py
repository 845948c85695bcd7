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
was edited since. Standard library only (the edit itself is install/toml_edit.py's, shared with
install/runtime_config.py); run by ``gpucr setup`` as ``python3 -S -E install/nri_config.py``::

    enable CONFIG STATE_DIR      print what was done; STATE_DIR/nri.json records it
    revert CONFIG STATE_DIR
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from toml_edit import (InstallError, edit_keeping_copy, literal, remove_written, render_key, restore_copy, run,
                       set_key, sha256, write_atomic, write_record)

NRI = "io.containerd.nri.v1.nri"
DROP_IN = "gpucr-nri.toml"
STATE = "nri.json"


def _needs_enable(doc: dict[str, Any]) -> bool:
    table = doc.get("plugins", {}).get(NRI, {})
    if doc.get("version", 1) == 2:
        return table.get("disable") is not False
    return table.get("disable") is True


def _header(version: int) -> str:
    return f"[{render_key(['plugins', NRI], version)}]"


def _value(v: Any) -> str:
    text = literal(v)
    if text is None:
        raise InstallError(f"the NRI table holds a value gpucr does not copy into a drop-in ({v!r})")
    return text


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
    fix = f"set disable = false in its {_header(version)} table by hand"
    return set_key(text, doc, ["plugins", NRI], "disable", False, version=version,
                   not_a_table=f"{path}: the NRI plugin's settings are not written as a {_header(version)} table; "
                               "set disable = false there by hand",
                   what=f"enabling NRI in {path}", fix=fix, named="disable key")


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
        write_atomic(drop, data, 0o644, 0, 0)
        record.update(action="drop-in", path=str(drop), sha256=sha256(data), made_dir=str(d) if made_dir else None)
        msg = f"NRI: enabled by the drop-in {drop} ({config} imports it; the config itself is unchanged)"
    else:
        after = edit(before.decode(), str(config)).encode()
        backup = state_dir / "config.before-nri"
        edit_keeping_copy(config, before, after, backup, state, record)
        return f"NRI: enabled in {config} (disable = false in its NRI table; a copy of the file is in {backup})"
    write_record(state, record)
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
        remove_written(drop, rec["sha256"], [rec["made_dir"]] if rec.get("made_dir") else [], did="wrote it",
                       fix=f"remove it by hand (and {state}) if NRI should be disabled again")
        msg = f"NRI: drop-in {drop} removed"
    elif action == "edit":
        msg = "NRI: " + restore_copy(config, rec, did="enabled NRI in it", undo="set the NRI table's disable back")
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
    return run("gpucr setup", lambda: print(
        f"gpucr setup: {(enable if a.cmd == 'enable' else revert)(a.config, a.state_dir)}", file=sys.stderr))

if __name__ == "__main__":
    sys.exit(main())
