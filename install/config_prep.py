"""``gpucr setup``'s first step: a containerd config the later steps (install/nri_config.py, install/runtime_config.py)
can edit, for the two installs whose config is not one yet, and undo exactly that.

* No config file (containerd from the release tarball runs on its built-in defaults): the file is created holding
  only ``version = N`` (2 for containerd 1.7, 3 for 2.x: what the running containerd reads), which means the same
  defaults; the later steps add the NRI table (1.7) and the default ``runc`` handler with gpucr's wrapper. Revert
  removes the file (and its directory, when this step made it): back to "no file".
* Docker's ``containerd.io`` package: ``disabled_plugins = ["cri"]`` and comments, no ``version`` line (containerd
  reads it as version 1, where ``"cri"`` names the CRI plugin). Kubernetes needs CRI, and gpucr's plugin sees only
  CRI containers, so ``gpucr setup --apply`` refuses it (nri_plugin/cli/setup.py says why and the fix) unless given
  ``--enable-cri``: then the plugin is taken out of ``disabled_plugins`` and the version line added, the parsed file
  checked to differ in exactly those two values. A version 1 file that sets plugin options (their table names differ
  between schema versions) is refused: convert it first.
A config that already has a ``version`` and runs CRI is left as it is. Revert restores the copy byte for byte, and
refuses (one line, file untouched) when the file was edited since. Standard library only; run by ``gpucr setup`` as
``python3 -S -E install/config_prep.py``::

    prepare CONFIG STATE_DIR --major N [--enable-cri]   print what was done; STATE_DIR/config_prep.json records it
    revert CONFIG STATE_DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

from toml_edit import (InstallError, edit_keeping_copy, literal, remove_written, restore_copy, run, sha256,
                       write_atomic, write_record)

STATE = "config_prep.json"
#: the CRI plugin's names in ``disabled_plugins``: its full ID, and in a version 1 config its short one
CRI_IDS = ("io.containerd.grpc.v1.cri", "cri")
MARK = "# written by gpucr setup --apply (removed by gpucr setup --revert): containerd had no config file"


def cri_disabled(doc: dict[str, Any]) -> list[str]:
    """The entries of ``disabled_plugins`` that turn containerd's CRI plugin off (``"cri"`` counts in a config
    without ``version``, which containerd reads as version 1 and matches by short name)."""
    names = doc.get("disabled_plugins") or []
    if not isinstance(names, list):
        return []
    return [n for n in names if n == CRI_IDS[0] or (n == CRI_IDS[1] and "version" not in doc)]


def schema(major: int | None) -> int:
    if major is None:
        raise InstallError("the config has no version line: gpucr setup must know containerd's version to add one "
                           "(pass --containerd PATH, the containerd binary this node runs)")
    return 2 if major < 2 else 3


def _edit(text: str, doc: dict[str, Any], path: Path, major: int | None, drop: list[str]) -> str:
    """``text`` with a ``version`` line added (when it has none) and ``drop`` taken out of its one-line
    ``disabled_plugins``, proven by tomllib to change those values only."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    expected = copy.deepcopy(doc)
    if drop:
        expected["disabled_plugins"] = [n for n in doc["disabled_plugins"] if n not in drop]
        key = re.compile(r"^\s*disabled_plugins\s*=")
        at = next((i for i, ln in enumerate(lines) if key.match(ln)), None)
        if at is None:
            raise InstallError(f"{path}: disabled_plugins is not written as one top-level line; take "
                               f"{', '.join(json.dumps(d) for d in drop)} out of it by hand")
        lines[at] = f"disabled_plugins = {literal(expected['disabled_plugins'])}\n"
    if "version" not in doc:
        expected["version"] = schema(major)
        first = next((i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#")), len(lines))
        lines.insert(first, f"version = {schema(major)}\n")
    out = "".join(lines)
    todo = ([] if "version" in doc else [f"add version = {schema(major)} at its top"]) + \
        ([f"take {', '.join(json.dumps(d) for d in drop)} out of disabled_plugins"] if drop else [])
    fix = f"edit {path} by hand: {' and '.join(todo)}"
    try:
        got = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"preparing {path} gave invalid TOML ({exc}); file unchanged: {fix}") from exc
    if got != expected:
        raise InstallError(f"preparing {path} would change more than its version and disabled_plugins; file "
                           f"unchanged: {fix}")
    return out


def prepare(config: Path, state_dir: Path, major: int | None, enable_cri: bool) -> str:
    state = state_dir / STATE
    if state.exists():
        return "config: already prepared by an earlier gpucr setup (unchanged)"
    if not config.exists():
        data = f"{MARK} (its built-in defaults)\nversion = {schema(major)}\n".encode()
        made = [str(p) for p in reversed(config.parents) if not p.exists()]
        for d in made:
            os.mkdir(d, 0o755)
        write_record(state, {"format": 1, "config": str(config), "action": "created", "sha256": sha256(data),
                             "made_dirs": made})
        write_atomic(config, data, 0o644, 0, 0)
        return (f"config: {config} created (there was none: containerd ran on its built-in defaults; "
                f"version = {schema(major)} keeps them)")
    before = config.read_bytes()
    try:
        doc = tomllib.loads(before.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InstallError(f"{config} is not valid TOML ({exc}); fix it first") from exc
    drop = cri_disabled(doc)
    if drop and not enable_cri:
        raise InstallError(f"{config} disables containerd's CRI plugin (disabled_plugins = "
                           f"{literal(doc['disabled_plugins'])}): run gpucr setup --apply --enable-cri, or take it out "
                           "by hand")
    rec: dict[str, Any] = {"format": 1, "config": str(config)}
    if not drop and "version" in doc:
        rec["action"] = "none"
        write_record(state, rec)
        return f"config: {config} needs no preparation (unchanged)"
    if "version" not in doc and ("plugins" in doc or any(
            isinstance(n, str) and "." not in n and n not in drop
            for n in (doc.get("disabled_plugins") or []) + (doc.get("required_plugins") or []))):
        raise InstallError(f"{config} has no version line (containerd reads it as version 1) and names plugins by "
                           "their version 1 names: convert it to version "
                           f"{schema(major) if major else '2 (1.7) or 3 (2.x)'} first (containerd 2.x: `containerd "
                           "config migrate`; 1.7: add version = 2 and give each plugin its full ID, e.g. "
                           "plugins.\"io.containerd.grpc.v1.cri\")")
    after = _edit(before.decode(), doc, config, major, drop).encode()
    backup = state_dir / "config.before-prep"
    edit_keeping_copy(config, before, after, backup, state, rec)
    what = ([f"version = {schema(major)} added"] if "version" not in doc else []) + \
        ([f"CRI enabled ({', '.join(json.dumps(d) for d in drop)} taken out of disabled_plugins)"] if drop else [])
    return f"config: {config}: {' and '.join(what)} (a copy of the file is in {backup})"


def revert(config: Path, state_dir: Path) -> str:
    state = state_dir / STATE
    try:
        rec = json.loads(state.read_text())
    except FileNotFoundError:
        return "config: nothing recorded (unchanged)"
    action = rec.get("action")
    if action == "created":
        remove_written(config, rec["sha256"], rec.get("made_dirs") or [], did="created it",
                       fix=f"remove it by hand (containerd then runs on its built-in defaults) and {state}")
        msg = f"config: {config} removed (there was none before gpucr setup)"
    elif action == "edit":
        msg = "config: " + restore_copy(config, rec, did="prepared it",
                                        undo="undo its version line and disabled_plugins")
    else:
        msg = f"config: {config} was left as it was (nothing to revert)"
    state.unlink()
    return msg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="install/config_prep.py", description=__doc__.split("\n", 1)[0])
    ap.add_argument("cmd", choices=["prepare", "revert"])
    ap.add_argument("config", type=lambda p: Path(os.path.realpath(p)))
    ap.add_argument("state_dir", type=Path)
    ap.add_argument("--major", type=int)
    ap.add_argument("--enable-cri", action="store_true")
    a = ap.parse_args(argv)
    return run("gpucr setup", lambda: print(
        "gpucr setup: " + (prepare(a.config, a.state_dir, a.major, a.enable_cri) if a.cmd == "prepare"
                           else revert(a.config, a.state_dir)), file=sys.stderr))

if __name__ == "__main__":
    sys.exit(main())
