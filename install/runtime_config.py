"""install/front.sh's edit of containerd's config: one runtime handler's ``BinaryName`` becomes gpucr's runc wrapper,
its ``container_annotations`` pass ``gpucr.io/*`` into the OCI spec, and uninstall puts the file back byte for byte.

CRI copies a container's annotations into config.json only where the handler's ``container_annotations`` names them
(containerd 1.7 and 2.x alike); the wrapper needs ``gpucr.io/restore-from`` there to refuse a restore gpucr's plugin
did not check (the plugin down at CreateContainer) instead of starting the container fresh (docs/design.md). The
value already there is kept and ``gpucr.io/*`` appended, unless a pattern there passes ``gpucr.io/restore-from``.

The wrapper execs what the handler ran before (its previous ``BinaryName``, e.g. nvidia-container-runtime or a
custom runc; with none, the runc found now), so the runtime chain is kept. Install keeps a copy of the config and
the SHA-256 of what it wrote (``DIR/install.json``); uninstall restores that copy only while the config is still
exactly what install wrote, and otherwise refuses with one line instead of overwriting someone's later edits.

Run by install/front.sh with /usr/bin/python3 (standard library only; the edit itself is install/toml_edit.py's,
shared with install/nri_config.py). Subcommands::

    target [--binary-name NAME]                       the absolute binary the wrapper would exec (default runc)
    plan CONFIG RUNTIME WRAPPER STATE [--runc PATH]   check that install can edit CONFIG; print that binary
    install CONFIG RUNTIME WRAPPER STATE TARGET       edit CONFIG, keep the copy and STATE
    uninstall CONFIG RUNTIME WRAPPER STATE            restore CONFIG from the copy
    status CONFIG RUNTIME [--json]                    print the chain: handler -> wrapper -> binary; criu -> front

Bad input prints one ``gpucr front: error:`` line naming the file, the handler and the fix, and touches nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toml_edit import (InstallError, dig, header_key, literal, render_key, run, set_key, sha256, write_atomic,
                       write_record)

#: the CRI plugin's runtime handlers table per config schema (containerd 1.7: version 2; containerd 2.x: version 3)
HANDLERS = {2: ["plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"],
            3: ["plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"]}
#: the second line of every wrapper install/front.sh writes (how gpucr recognises its own wrapper)
WRAPPER_MARK = "# gpucr: runc with gpucr's CRIU front first on PATH"
STATE_FORMAT = 1
#: appended to the routed handler's container_annotations (what the wrapper must see: RESTORE_ANNOTATION)
PASS_ANNOTATIONS = "gpucr.io/*"
RESTORE_ANNOTATION = "gpucr.io/restore-from"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./+@:-]*$")


# -- the config file -------------------------------------------------------------------------------------------------

@dataclass
class Handler:
    """One runtime handler of the CRI plugin in a parsed config."""

    version: int
    keys: list[str]            # the handler's table: HANDLERS[version] + [name]
    previous: str | None       # its BinaryName before gpucr ("" counts as none: the shim runs "runc")
    doc: dict[str, Any]


def find_handler(text: str, path: str, runtime: str) -> Handler:
    """The handler ``runtime`` of the config text. Raises InstallError naming what is missing."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{path} is not valid TOML ({exc}); fix it first") from exc
    version = doc.get("version", 1)
    if version not in HANDLERS:
        raise InstallError(f"{path} is a version {version} containerd config; install/front.sh edits version 2 "
                           "(containerd 1.7) and 3 (2.x) configs: convert it with `containerd config migrate`")
    base = HANDLERS[version]
    handlers = dig(doc, base)
    if not isinstance(handlers, dict) or not isinstance(handlers.get(runtime), dict):
        names = ", ".join(sorted(handlers)) if isinstance(handlers, dict) and handlers else "none"
        raise InstallError(f"{path} has no runtime handler '{runtime}' ([{render_key([*base, runtime], version)}]; "
                           f"handlers there: {names}): add it (`containerd config default` shows one) or pick "
                           "another --runtime")
    options = handlers[runtime].get("options")
    if options is not None and not isinstance(options, dict):
        raise InstallError(f"{path}: options of runtime handler '{runtime}' is not a table")
    prev = (options or {}).get("BinaryName") or None
    if prev is not None and not isinstance(prev, str):
        raise InstallError(f"{path}: BinaryName of runtime handler '{runtime}' is not a string ({prev!r})")
    return Handler(version, [*base, runtime], prev, doc)


def _builtin_runc(text: str, path: str, runtime: str, wrapper: str) -> tuple[str, Handler] | None:
    """Where CONFIG names no handler ``runc`` and no other default runtime, containerd runs its built-in one
    (runtime_type io.containerd.runc.v2, no options): Debian's and Ubuntu's containerd packages ship such a config.
    Then the handler is written out with the wrapper as its BinaryName (checked with tomllib to add just that)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    base = HANDLERS.get(doc.get("version", 1))
    cri = dig(doc, base[:-1]) if base else None
    if runtime != "runc" or base is None or (cri is not None and not isinstance(cri, dict)) \
            or (cri or {}).get("default_runtime_name", "runc") != "runc" or dig(doc, [*base, runtime]) is not None:
        return None
    version = doc["version"]
    lines = [text if not text or text.endswith("\n") else text + "\n",
             "\n", f"[{render_key([*base, runtime], version)}]\n", '  runtime_type = "io.containerd.runc.v2"\n',
             f"  container_annotations = [{json.dumps(PASS_ANNOTATIONS)}]\n",
             "\n", f"[{render_key([*base, runtime, 'options'], version)}]\n", f"  BinaryName = {json.dumps(wrapper)}\n"]
    out = "".join(lines)
    expected = copy.deepcopy(doc)
    table = expected
    for k in base:
        table = table.setdefault(k, {})
    table[runtime] = {"runtime_type": "io.containerd.runc.v2", "container_annotations": [PASS_ANNOTATIONS],
                      "options": {"BinaryName": wrapper}}
    try:
        got = tomllib.loads(out)
    except tomllib.TOMLDecodeError as exc:
        raise InstallError(f"{path} uses containerd's built-in runtime 'runc'; adding its table gave invalid TOML "
                           f"({exc}); file unchanged: add [{render_key([*base, runtime], version)}] with runtime_type "
                           '"io.containerd.runc.v2" by hand, then install again') from exc
    if got != expected:
        raise InstallError(f"{path}: adding runtime 'runc' would change more than that handler; file unchanged: add "
                           f"[{render_key([*base, runtime], version)}] by hand, then install again")
    return out, Handler(version, [*base, runtime], None, doc)


def edit(text: str, path: str, runtime: str, wrapper: str) -> tuple[str, Handler]:
    """The config text with handler ``runtime``'s BinaryName set to ``wrapper``, checked with tomllib to differ from
    the original in that one value only (or, for containerd's built-in runc, that handler added). Raises
    InstallError."""
    builtin = _builtin_runc(text, path, runtime, wrapper)
    if builtin is not None:
        return builtin
    h = find_handler(text, path, runtime)
    want = [*h.keys, "options"]
    fix = f"set BinaryName = {json.dumps(wrapper)} in its options by hand"
    out = set_key(text, h.doc, want, "BinaryName", wrapper, version=h.version,
                  not_a_table=f"{path}: the options of runtime handler '{runtime}' are not written as a "
                              f"[{render_key(want, h.version)}] table (inline or dotted keys): write that table, then "
                              "install again",
                  what=f"editing {path} for runtime '{runtime}'", fix=fix)
    return with_annotations(out, path, runtime), h


def passes(patterns: list[str], key: str = RESTORE_ANNOTATION) -> bool:
    """Whether one of a handler's annotation patterns passes ``key`` (containerd matches them with Go's
    ``path.Match``: ``*`` and ``?`` stop at ``/``, ``[...]`` classes, ``\\`` escapes)."""
    return any(_go_match(p, key) for p in patterns)


def _go_match(pattern: str, name: str) -> bool:
    rx, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            rx += re.escape(pattern[i])
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                return False  # path.Match: ErrBadPattern, which containerd treats as no match
            body = pattern[i + 1:end]
            rx += "[" + ("^" + re.escape(body[1:]).replace("\\-", "-") if body.startswith("^")
                         else re.escape(body).replace("\\-", "-")) + "]"
            i = end
        else:
            rx += re.escape(c)
        i += 1
    return re.fullmatch(rx, name) is not None


def annotation_patterns(doc: dict[str, Any], keys: list[str], path: str, runtime: str) -> list[str]:
    """The handler's ``container_annotations`` (none: []). Raises InstallError when it is not a list of strings."""
    value = (dig(doc, keys) or {}).get("container_annotations")
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InstallError(f"{path}: container_annotations of runtime handler '{runtime}' is not a list of strings "
                           f"({value!r}): fix it (e.g. container_annotations = [{json.dumps(PASS_ANNOTATIONS)}])")
    return value


def _append_table(text: str, path: str, h: Handler, want: list[str]) -> str:
    """A handler defined only through its ``[...options]`` table (TOML makes it implicitly): its own header appended
    with the one key, proven by tomllib to add just that (dotted keys defining it make the check fail)."""
    table = render_key(h.keys, h.version)
    out = (text if not text or text.endswith("\n") else text + "\n") + \
        f"\n[{table}]\n  container_annotations = {literal(want)}\n"
    expected = copy.deepcopy(h.doc)
    node = expected
    for k in h.keys:
        node = node.setdefault(k, {})
    node["container_annotations"] = want
    try:
        ok = tomllib.loads(out) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise InstallError(f"{path}: runtime handler '{h.keys[-1]}' is written with dotted keys or inline tables, so "
                           f"gpucr cannot add container_annotations to it; file unchanged: write it as a [{table}] "
                           f"table with container_annotations = {literal(want)}, then install again")
    return out


def with_annotations(text: str, path: str, runtime: str) -> str:
    """``text`` with ``gpucr.io/*`` appended to handler ``runtime``'s container_annotations (kept as they are when a
    pattern there already passes ``gpucr.io/restore-from``), checked with tomllib to change that value only."""
    h = find_handler(text, path, runtime)
    have = annotation_patterns(h.doc, h.keys, path, runtime)
    if passes(have):
        return text
    want = [*have, PASS_ANNOTATIONS]
    table = render_key(h.keys, h.version)
    if not any(header_key(ln) == h.keys for ln in text.splitlines()):
        return _append_table(text, path, h, want)
    return set_key(text, h.doc, h.keys, "container_annotations", want, version=h.version,
                   not_a_table=f"{path}: runtime handler '{runtime}' is not written as a [{table}] table (only its "
                               f"options table, or dotted keys): write that table header, then install again",
                   what=f"adding {PASS_ANNOTATIONS} to container_annotations of runtime '{runtime}' in {path}",
                   fix=f"set container_annotations = {json.dumps(want)} under [{table}] by hand")


# -- the binary the wrapper execs ------------------------------------------------------------------------------------

def is_gpucr_wrapper(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return WRAPPER_MARK.encode() in head


def resolve_target(name: str, wrapper: str | None = None) -> str:
    """The absolute, real path of the runtime binary ``name`` (searched on PATH if relative), checked: executable,
    not a gpucr wrapper (install never wraps itself), root-owned and not group/world-writable (it runs as root)."""
    found = name if "/" in name else shutil.which(name)
    if not found:
        raise InstallError(f"runtime binary '{name}' is not on PATH ({os.environ.get('PATH', '')}): install it or "
                           "give its absolute path (--runc PATH, or BinaryName in the config)")
    found = os.path.abspath(found)
    if not os.path.isfile(found) or not os.access(found, os.X_OK):
        raise InstallError(f"runtime binary {found} is missing or not executable; install it or fix the path")
    real = os.path.realpath(found)
    if is_gpucr_wrapper(real) or (wrapper and real == os.path.realpath(wrapper)):
        raise InstallError(f"runtime binary {found} is a gpucr runc wrapper itself; give the real runtime (the "
                           "handler's BinaryName before gpucr, e.g. /usr/bin/runc)")
    st = os.stat(real)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise InstallError(f"runtime binary {real} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}:"
                           f" the wrapper would run it as root; fix: chown root {real}; chmod go-w {real}")
    if not _SAFE_PATH.match(real):
        raise InstallError(f"runtime binary path {real!r} has characters the wrapper script does not quote; "
                           "use a path of letters, digits and ._/+@:-")
    return real


# -- state: what install did, so uninstall can undo exactly that ------------------------------------------------------

def _load_state(state: Path) -> dict[str, Any] | None:
    try:
        st = json.loads(state.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InstallError(f"{state} is unreadable ({exc}); restore the config from {state.parent}/config.before-gpucr"
                           " by hand if it is there") from exc
    if not isinstance(st, dict) or st.get("format") != STATE_FORMAT:
        raise InstallError(f"{state} is not an install record of this install/front.sh; restore the config from "
                           f"{state.parent}/config.before-gpucr by hand if it is there")
    return st


def _same_install(st: dict[str, Any], config: str, runtime: str, state: Path) -> None:
    if st["config"] != config or st["runtime"] != runtime:
        raise InstallError(f"{state} says the route is installed for {st['config']} runtime '{st['runtime']}'; "
                           "uninstall that first (or use another --dir)")


def plan(config: Path, runtime: str, wrapper: str, state: Path, runc: str | None) -> str:
    """Check everything install will do to CONFIG; return the binary the wrapper must exec."""
    text = _read(config)
    st = _load_state(state)
    if st is not None:  # installed before: same handler, and the wrapper keeps its recorded target
        _same_install(st, str(config), runtime, state)
        h = find_handler(text, str(config), runtime)
        if h.previous != wrapper:
            raise InstallError(f"{config}: runtime '{runtime}' runs {h.previous or 'runc'}, not {wrapper}, although "
                               f"{state} says gpucr installed it: run install/front.sh uninstall first")
        return resolve_target(st["target"], wrapper)
    _, h = edit(text, str(config), runtime, wrapper)
    if h.previous and os.path.realpath(h.previous) == os.path.realpath(wrapper):
        raise InstallError(f"{config}: runtime '{runtime}' already runs {wrapper} but {state} is missing: set its "
                           "BinaryName back to the runtime it ran before by hand, then install again")
    if h.previous and runc:
        raise InstallError(f"{config}: runtime '{runtime}' names its runtime (BinaryName = {h.previous}); the wrapper "
                           "execs that one: drop --runc (or change BinaryName first)")
    return resolve_target(h.previous or runc or "runc", wrapper)


def install(config: Path, runtime: str, wrapper: str, state: Path, target: str) -> str:
    """Point the handler at the wrapper, keeping a copy of CONFIG and the record uninstall needs."""
    before = _read_bytes(config)
    st = _load_state(state)
    if st is not None:
        _same_install(st, str(config), runtime, state)
        if sha256(before) != st["sha256_installed"]:
            return (f"{config} was edited since install (runtime '{runtime}' still runs {wrapper}); left as it is "
                    "(uninstall will refuse to overwrite those edits)")
        after = with_annotations(before.decode(), str(config), runtime).encode()
        if after == before:
            return f"{config} already runs {wrapper} for runtime '{runtime}' (unchanged)"
        # an install by a gpucr before container_annotations: added now; uninstall still restores the first copy
        meta = os.stat(config)
        write_record(state, {**st, "sha256_installed": sha256(after)})
        write_atomic(config, after, stat.S_IMODE(meta.st_mode), meta.st_uid, meta.st_gid)
        return f"{config}: runtime '{runtime}' now passes {PASS_ANNOTATIONS} annotations into the OCI spec"
    out, h = edit(before.decode(), str(config), runtime, wrapper)
    after = out.encode()
    meta = os.stat(config)
    backup = state.parent / "config.before-gpucr"
    write_atomic(backup, before, 0o600, 0, 0)
    record = {"format": STATE_FORMAT, "config": str(config), "runtime": runtime, "wrapper": wrapper,
              "previous_binary_name": h.previous, "target": target, "backup": str(backup),
              "sha256_before": sha256(before), "sha256_installed": sha256(after),
              "mode": stat.S_IMODE(meta.st_mode), "uid": meta.st_uid, "gid": meta.st_gid}
    write_record(state, record)
    try:
        write_atomic(config, after, stat.S_IMODE(meta.st_mode), meta.st_uid, meta.st_gid)
    except OSError:
        state.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)
        raise
    was = f"BinaryName {h.previous}" if h.previous else "no BinaryName (runc)"
    return (f"{config}: runtime '{runtime}' now runs {wrapper} -> {target} and passes {PASS_ANNOTATIONS} annotations "
            f"into the OCI spec (it had {was}; a copy is in {backup})")


def uninstall(config: Path, runtime: str, wrapper: str, state: Path) -> str:
    """Restore CONFIG byte for byte from install's copy, only while it is still exactly what install wrote."""
    st = _load_state(state)
    if st is None:
        if find_handler(_read(config), str(config), runtime).previous == wrapper:
            raise InstallError(f"{config}: runtime '{runtime}' runs {wrapper} but the install record {state} is missing "
                               "(was the route directory removed?): set its BinaryName back by hand")
        raise InstallError(f"{state} is missing: the route was not installed by install/front.sh (nothing to undo)")
    _same_install(st, str(config), runtime, state)
    now = _read_bytes(config)
    backup = Path(st["backup"])
    if sha256(now) == st["sha256_before"]:
        return f"{config} is already as it was before install (unchanged)"
    if sha256(now) != st["sha256_installed"]:
        h = find_handler(now.decode(), str(config), runtime)
        if h.previous != wrapper:
            return (f"{config}: runtime '{runtime}' no longer runs {wrapper} (BinaryName = {h.previous or 'none'}); "
                    "config left as it is")
        was = f"BinaryName = {json.dumps(st['previous_binary_name'])}" if st["previous_binary_name"] else \
            "no BinaryName line"
        raise InstallError(f"{config} was edited since install/front.sh installed the route: not overwriting those "
                           f"edits. Fix: give runtime '{runtime}' its previous {was} by hand (the whole file as it was "
                           f"before install is {backup}), then run uninstall again")
    data = _read_bytes(backup)
    if sha256(data) != st["sha256_before"]:
        raise InstallError(f"the copy {backup} does not match the config install replaced (SHA-256 differs): config "
                           f"left as it is; set runtime '{runtime}''s BinaryName back by hand")
    write_atomic(config, data, st["mode"], st["uid"], st["gid"])
    return f"{config}: runtime '{runtime}' restored (byte-identical to before install)"


# -- status: the chain as it stands ----------------------------------------------------------------------------------

def _wrapper_parts(path: str) -> tuple[str | None, str | None]:
    """(the front's dir put first on PATH, the binary exec'd) of a gpucr wrapper."""
    text = Path(path).read_text()
    m_path = re.search(r"^PATH=([^:\n]+):", text, re.M)
    m_exec = re.search(r'^exec (\S+) "\$@"', text, re.M)
    return (m_path.group(1) if m_path else None), (m_exec.group(1) if m_exec else None)


def _front_conf(path_dir: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path(path_dir, "front.conf").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        k, sep, v = line.partition("=")
        if sep and not k.strip().startswith("#"):
            out[k.strip()] = v.strip()
    return out


def chain(config: Path, runtime: str) -> dict[str, Any]:
    text = _read(config)
    builtin = _builtin_runc(text, str(config), runtime, "/")
    h = builtin[1] if builtin is not None else find_handler(text, str(config), runtime)  # built-in runc: no options
    binary = h.previous or "runc"
    patterns = [] if builtin is not None else annotation_patterns(h.doc, h.keys, str(config), runtime)
    out: dict[str, Any] = {"config": str(config), "runtime": runtime, "BinaryName": h.previous, "gpucr": False,
                           "chain": [binary], "container_annotations": patterns,
                           "passes_restore_from": passes(patterns),
                           "annotations_fix": f"container_annotations = {json.dumps([*patterns, PASS_ANNOTATIONS])} "
                                              f"under [{render_key(h.keys, h.version)}]"}
    resolved = binary if "/" in binary else shutil.which(binary)
    if not resolved or not is_gpucr_wrapper(resolved):
        return out
    path_dir, target = _wrapper_parts(resolved)
    out.update(gpucr=True, wrapper=resolved, target=target, front_dir=path_dir)
    out["chain"] = [resolved, target]
    if path_dir:
        criu = os.path.join(path_dir, "criu")
        conf = _front_conf(path_dir)
        out.update(front=criu, front_code=os.path.realpath(criu), real_criu=conf.get("real_criu"),
                   hooks=conf.get("hooks"))
    state = Path(resolved).parent.parent / "install.json"
    st = _load_state(state) if state.exists() else None
    out["installed_by"] = str(state) if st and st["config"] == str(config) and st["runtime"] == runtime else None
    return out


def render_chain(c: dict[str, Any]) -> str:
    if not c["gpucr"]:
        return (f"runtime '{c['runtime']}' in {c['config']}: {c['chain'][0]} (gpucr's CRIU front is not installed "
                "for this handler)")
    lines = [f"runtime '{c['runtime']}' in {c['config']}:",
             f"  {c['runtime']} -> {c['wrapper']} (gpucr runc wrapper) -> {c['target']} (the handler's runtime before "
             "gpucr)"]
    lines.append(f"  container_annotations: {c['container_annotations']} (gpucr.io/restore-from reaches the OCI spec)"
                 if c["passes_restore_from"] else
                 f"  container_annotations: {c['container_annotations']}: gpucr.io/restore-from does not reach the OCI "
                 f"spec, so a container created while gpucr's plugin is down starts fresh; fix: {c['annotations_fix']}")
    if c.get("front"):
        lines.append(f"  criu on its PATH -> {c['front']} (gpucr CRIU front, code {c['front_code']}, hooks "
                     f"{c.get('hooks') or 'none'}) -> {c.get('real_criu') or '/usr/sbin/criu'} (real criu)")
    lines.append(f"  install record: {c['installed_by']} (uninstall restores the config)" if c["installed_by"] else
                 "  no install record beside the wrapper: uninstall cannot restore this config")
    return "\n".join(lines)


# -- command line ----------------------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InstallError(f"containerd config {path} does not exist") from None
    except OSError as exc:
        raise InstallError(f"cannot read containerd config {path}: {exc.strerror}") from exc


def _read(path: Path) -> str:
    try:
        return _read_bytes(path).decode()
    except UnicodeDecodeError as exc:
        raise InstallError(f"containerd config {path} is not UTF-8 text") from exc


def _abs(p: str) -> Path:
    """The config's real path: a symlinked config is edited (and restored) where it lives, the link stays."""
    return Path(os.path.realpath(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="install/runtime_config.py", description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("target")
    t.add_argument("--binary-name", default="runc")
    for name in ("plan", "install", "uninstall"):
        p = sub.add_parser(name)
        p.add_argument("config", type=_abs)
        p.add_argument("runtime")
        p.add_argument("wrapper")
        p.add_argument("state", type=Path)
        if name == "plan":
            p.add_argument("--runc")
        if name == "install":
            p.add_argument("target")
    s = sub.add_parser("status")
    s.add_argument("config", type=_abs)
    s.add_argument("runtime")
    s.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    def act() -> None:
        if a.cmd == "target":
            print(resolve_target(a.binary_name))
        elif a.cmd == "plan":
            print(plan(a.config, a.runtime, a.wrapper, a.state, a.runc))
        elif a.cmd == "install":
            print(f"gpucr front: {install(a.config, a.runtime, a.wrapper, a.state, a.target)}",
                  file=sys.stderr)
        elif a.cmd == "uninstall":
            print(f"gpucr front: {uninstall(a.config, a.runtime, a.wrapper, a.state)}", file=sys.stderr)
        else:
            c = chain(a.config, a.runtime)
            print(json.dumps(c) if a.json else render_chain(c))
    return run("gpucr front", act)

if __name__ == "__main__":
    sys.exit(main())
