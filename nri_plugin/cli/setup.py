"""``gpucr setup``: connect gpucr to this node's containerd, reversibly (never run by a package's scripts).

``--apply`` does, in order, each step recorded in ``STATE_DIR/state.json`` as soon as it is done:
  0. a config the next steps can edit (``install/config_prep.py``): with none (containerd from the release tarball)
     one holding only ``version = N`` is created; Docker's ``containerd.io`` config (``disabled_plugins = ["cri"]``,
     no version line) is refused, since kubelet needs CRI and gpucr's plugin sees only CRI containers, unless
     ``--enable-cri`` asks to take CRI out of ``disabled_plugins`` (and add the version line);
  1. NRI enabled in containerd's config (``install/nri_config.py``: nothing, a drop-in, or the smallest edit);
  2. each named runtime handler (default: the CRI default runtime, the one kubelet uses) routed through gpucr's CRIU
     front by ``install/front.sh install``, keeping the handler's own binary at the end of the chain (e.g.
     nvidia-container-runtime); its route lives in ``STATE_DIR/front-<handler>``;
  3. with ``--restart``: containerd (and gpucr-plugin.service, if running) restarted through systemd.
``--revert`` undoes the steps in reverse, each file back byte for byte (refusing, with the fix, where someone edited
it since). A failed ``--apply`` reverts what it did itself. Without a flag: what is applied. The install scripts come
from beside this package (``/usr/lib/gpucr/install`` in the system package, ``install/`` in a checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..ckpt.criu.binary import GPUCR_CRIU, default_criu
from ..errors import GpucrError

__all__ = ["register", "SetupError", "cri_disabled", "default_runtime", "default_real_criu"]

INSTALL = Path(__file__).resolve().parents[2] / "install"
STATE_DIR = Path("/var/lib/gpucr/setup")
_CRI = {2: ("io.containerd.grpc.v1.cri", "containerd"), 3: ("io.containerd.cri.v1.runtime", "containerd")}


class SetupError(GpucrError):
    """gpucr setup cannot apply or revert: the message says which step and the fix."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("setup", help="apply gpucr to containerd (NRI, CRIU front route), or revert it")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--apply", action="store_true", help="enable NRI and route runtime handlers through the front")
    mode.add_argument("--revert", action="store_true", help="undo --apply, byte for byte")
    p.add_argument("--config", type=Path, default=Path("/etc/containerd/config.toml"),
                   help="containerd's config (default: %(default)s)")
    p.add_argument("--runtime", action="extend", nargs="+", metavar="NAME",
                   help="runtime handler(s) to route through the front (default: the CRI default runtime)")
    p.add_argument("--real-criu", help=f"the criu the front runs (default: {GPUCR_CRIU} if gpucr-criu is installed, "
                                       "else criu on PATH)")
    p.add_argument("--enable-cri", action="store_true",
                   help="where the config disables containerd's CRI plugin (Docker's containerd.io package ships "
                        "disabled_plugins = [\"cri\"]), enable it (reverted by --revert)")
    p.add_argument("--containerd", metavar="PATH",
                   help="the containerd binary the node runs; its version decides the schema of a config that has "
                        "no version line or does not exist (default: containerd on PATH, /usr/local/bin, /usr/bin)")
    p.add_argument("--prefix", type=Path, default=Path("/usr/lib/gpucr"),
                   help="where the front's code is (the package's tree, or a copy made there; default %(default)s)")
    p.add_argument("--restart", action="store_true", help="restart containerd (systemd) after --apply/--revert")
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help="where setup keeps its record (default: "
                                                                     "%(default)s)")
    p.set_defaults(func=run)


def read_config(config: Path) -> dict[str, Any] | None:
    """containerd's config parsed; None when there is none (containerd then runs on its built-in defaults)."""
    try:
        return tomllib.loads(config.read_text())
    except FileNotFoundError:
        if not config.parent.is_dir() and not config.parent.parent.is_dir():
            raise SetupError(f"containerd config {config} does not exist, nor its directory's parent: pass the "
                             "--config containerd runs with") from None
        return None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read containerd config {config}: {exc}") from exc


def cri_disabled(doc: dict[str, Any] | None) -> list[str]:
    """The ``disabled_plugins`` entries of containerd's config ``doc`` that turn CRI off: the full ID, and "cri" in
    a config without version, which containerd reads as version 1 (Docker's containerd.io package ships
    ``disabled_plugins = ["cri"]``; install/config_prep.py, which cannot import gpucr, names the same entries)."""
    names = (doc or {}).get("disabled_plugins") or []
    return [n for n in names if n == "io.containerd.grpc.v1.cri" or (n == "cri" and "version" not in (doc or {}))] \
        if isinstance(names, list) else []


def check_cri(config: Path, doc: dict[str, Any] | None, enable_cri: bool) -> None:
    """Refuse a config that disables containerd's CRI plugin (:func:`cri_disabled`), unless --enable-cri."""
    names = (doc or {}).get("disabled_plugins") or []
    if cri_disabled(doc) and not enable_cri:
        raise SetupError(f"containerd's CRI plugin is disabled in {config} (disabled_plugins = {json.dumps(names)}, "
                         "as Docker's containerd.io package ships it): kubelet cannot use this containerd and gpucr's "
                         "plugin would see no container. Fix: gpucr setup --apply --enable-cri (enables CRI; "
                         "--revert disables it again), or take \"cri\" out of disabled_plugins yourself; a host "
                         "without Kubernetes needs no setup for ctr containers (docs/install.md)")


def containerd_major(binary: str | None) -> int:
    """The major version of the containerd binary ``binary`` (default: containerd on PATH, /usr/local/bin,
    /usr/bin), from ``containerd --version``."""
    found = binary or shutil.which("containerd", path=os.environ.get("PATH", "") + ":/usr/local/bin:/usr/bin")
    how = "pass --containerd PATH (the containerd binary this node runs)"
    if not found:
        raise SetupError(f"the config has no version line or does not exist, and no containerd binary was found to "
                         f"tell which schema it reads: {how}")
    try:
        out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"cannot run {found} --version ({exc}): {how}") from exc
    m = re.match(r"containerd \S+ v?(\d+)\.(\d+)", out)
    if not m:
        raise SetupError(f"{found} --version printed no containerd version ({out.strip()[:80]!r}): {how}")
    return int(m.group(1))


def default_runtime(config: Path) -> str:
    """The CRI plugin's default_runtime_name in ``config`` (what kubelet's pods run with), else runc (also with no
    config: containerd's built-in default)."""
    doc = read_config(config) or {}
    plugin, section = _CRI.get(doc.get("version", 1), _CRI[2])
    name = doc.get("plugins", {}).get(plugin, {}).get(section, {}).get("default_runtime_name")
    return name if isinstance(name, str) and name else "runc"


def default_real_criu() -> str:
    """The front's real criu by the node's one rule (:func:`nri_plugin.ckpt.criu.binary.default_criu`)."""
    found = default_criu()
    if not found:
        raise SetupError(f"no criu found (neither gpucr-criu's {GPUCR_CRIU} nor criu on PATH): install the "
                         "gpucr-criu package (or CRIU >= 4.1) or pass --real-criu PATH")
    return found


def _say(msg: str) -> None:
    print(f"gpucr setup: {msg}", file=sys.stderr)


def _step(what: str, cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SetupError(f"{what} failed (its error is above)")


def _nri(action: str, config: Path, state_dir: Path) -> None:
    _step(f"NRI {action}", ["/usr/bin/python3", "-S", "-E", str(INSTALL / "nri_config.py"), action, str(config),
                            str(state_dir)])


def _prep(action: str, config: Path, state_dir: Path, *extra: str) -> None:
    _step(f"config {action}", ["/usr/bin/python3", "-S", "-E", str(INSTALL / "config_prep.py"), action, str(config),
                               str(state_dir), *extra])


def _front(action: str, config: Path, runtime: str, state_dir: Path, *extra: str) -> None:
    _step(f"route of runtime '{runtime}' ({action})", ["bash", str(INSTALL / "front.sh"), action, "--config",
                                                         str(config), "--runtime", runtime, "--dir",
                                                         str(state_dir / f"front-{runtime}"), *extra])


def _load(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / "state.json").read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SetupError(f"{state_dir}/state.json is unreadable ({exc}): fix or remove it by hand") from exc


def _save(state_dir: Path, st: dict[str, Any]) -> None:
    tmp = state_dir / ".state.json.tmp"
    tmp.write_text(json.dumps(st, indent=1) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, state_dir / "state.json")


def _restart(apply: bool) -> None:
    if not Path("/run/systemd/system").is_dir() or subprocess.run(
            ["systemctl", "cat", "containerd.service"], capture_output=True).returncode != 0:
        raise SetupError("--restart needs containerd.service under systemd, and there is none: restart containerd "
                         "yourself to " + ("apply" if apply else "finish the revert"))
    _step("systemctl restart containerd", ["systemctl", "restart", "containerd.service"])
    subprocess.run(["systemctl", "try-restart", "gpucr-plugin.service"], check=False)
    _say("containerd restarted")


def apply(config: Path, runtimes: list[str], real_criu: str, state_dir: Path, prep: tuple[str, ...] = (),
          prefix: Path = Path("/usr/lib/gpucr")) -> None:
    """``prep``: install/config_prep.py's options (``--major N``, ``--enable-cri``)."""
    st = _load(state_dir)
    if st is not None:
        if st["config"] != str(config):
            raise SetupError(f"gpucr setup is applied to {st['config']} ({state_dir}/state.json): revert it first "
                             "(gpucr setup --revert), then apply to another config")
        todo = [r for r in runtimes if r not in st["runtimes"]]
        if not todo:
            _say(f"already applied to {config} (runtimes {', '.join(st['runtimes'])}); nothing changed")
            return
    else:
        st = {"format": 1, "config": str(config), "nri": False, "runtimes": [], "real_criu": real_criu}
        todo = runtimes
    state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o755)
    _save(state_dir, st)
    try:
        if not st.get("prep"):
            _prep("prepare", config, state_dir, *prep)
            st["prep"] = True
            _save(state_dir, st)
        if not st["nri"]:
            _nri("enable", config, state_dir)
            st["nri"] = True
            _save(state_dir, st)
        for r in todo:
            _front("install", config, r, state_dir, "--real-criu", real_criu, "--prefix", str(prefix))
            st["runtimes"].append(r)
            _save(state_dir, st)
    except SetupError:
        _say("apply failed: undoing what it did")
        revert(state_dir, quiet_missing=True)
        raise


def revert(state_dir: Path, quiet_missing: bool = False) -> bool:
    """Undo what state.json records; False when nothing was applied."""
    st = _load(state_dir)
    if st is None:
        if not quiet_missing:
            _say(f"nothing applied ({state_dir}/state.json is missing); nothing changed")
        return False
    config = Path(st["config"])
    for r in reversed(list(st["runtimes"])):
        _front("uninstall", config, r, state_dir)
        st["runtimes"].remove(r)
        _save(state_dir, st)
    if st["nri"]:
        _nri("revert", config, state_dir)
        st["nri"] = False
        _save(state_dir, st)
    if st.get("prep"):
        _prep("revert", config, state_dir)
    shutil.rmtree(state_dir)
    try:
        state_dir.parent.rmdir()  # /var/lib/gpucr, when setup was all that used it
    except OSError:
        pass
    _say(f"reverted: {config} is as it was before gpucr setup")
    return True


def status(state_dir: Path) -> int:
    st = _load(state_dir)
    if st is None:
        print(f"gpucr setup: not applied ({state_dir}/state.json is missing)")
        return 3
    try:
        prep = json.loads((state_dir / "config_prep.json").read_text()).get("action", "none")
    except (OSError, ValueError):
        prep = "none"
    made = {"created": "config created by gpucr setup; ", "edit": "config prepared by gpucr setup (version line, "
            "CRI); "}.get(prep, "")
    print(f"gpucr setup: applied to {st['config']}: {made}NRI {'enabled by gpucr setup' if st['nri'] else 'untouched'}"
          f"; real criu {st['real_criu']}", flush=True)
    for r in st["runtimes"]:
        subprocess.run(["bash", str(INSTALL / "front.sh"), "status", "--config", st["config"], "--runtime", r],
                       check=False)
    return 0


def run(args: argparse.Namespace) -> int:
    if not (args.apply or args.revert):
        return status(args.state_dir)
    if os.geteuid() != 0:
        raise SetupError("must run as root (it edits containerd's config and installs root-owned routes)")
    if args.apply:
        config = Path(os.path.realpath(args.config))
        doc = read_config(config)
        check_cri(config, doc, args.enable_cri)
        runtimes = args.runtime or [default_runtime(config)]
        real_criu = args.real_criu or default_real_criu()
        prep = (*(["--major", str(containerd_major(args.containerd))] if doc is None or "version" not in doc else []),
                *(["--enable-cri"] if args.enable_cri else []))
        apply(config, runtimes, real_criu, args.state_dir, prep, args.prefix)
        _say(f"applied to {config}: NRI enabled, runtime handler(s) {', '.join(runtimes)} through gpucr's CRIU front "
             f"(real criu {real_criu}); undo with gpucr setup --revert")
        if real_criu != default_criu():  # the plugin's restore checks ask the node config's criu_path
            _say(f"set criu_path = \"{real_criu}\" in /etc/gpucr/config.toml: restores are checked against the "
                 "version of the CRIU the front runs")
    elif not revert(args.state_dir):
        return 0
    if args.restart:
        _restart(args.apply)
    else:
        _say("containerd not restarted: restart it to " + ("apply" if args.apply else "finish the revert") +
             " (systemctl restart containerd, or gpucr setup --restart)")
    if args.apply:
        _say("then start gpucr's plugin: systemctl enable --now gpucr-plugin (or the pre-registered "
             "/usr/lib/gpucr/nri/10-gpucr, see /usr/share/doc/gpucr/README.md)")
    return 0
