"""Where the front finds the real criu, its log dir and its hooks.

Sources, highest first: the environment (``GPUCR_REAL_CRIU``, ``GPUCR_FRONT_LOG_DIR``, ``GPUCR_FRONT_HOOKS``), then
the first configuration file that exists of ``$GPUCR_FRONT_CONF``, ``front.conf`` beside the ``criu`` the runtime
ran (the route directory install/front.sh makes, so each containerd instance can have its own), and
``/etc/gpucr/front.conf``; then the defaults. The file holds ``key = value`` lines (``real_criu``, ``log_dir``,
``hooks``, ``relay = auto|always``, and any key a hook wants), ``#`` comments, optional quotes: simple enough to
parse without tomllib on the start-up path. The real criu is never found through PATH, so the front cannot recurse
onto itself.
"""

from __future__ import annotations

import os

from .errors import FrontError

__all__ = ["ACTIVE_ENV", "DEFAULT_LOG_DIR", "DEFAULT_REAL_CRIU", "SYSTEM_CONF", "FrontConfig", "load", "load_hooks",
           "parse_conf"]

DEFAULT_REAL_CRIU = "/usr/sbin/criu"
DEFAULT_LOG_DIR = "/var/log/gpucr"
SYSTEM_CONF = "/etc/gpucr/front.conf"
#: set in the real criu's environment; a front that finds it set was started by criu or by itself
ACTIVE_ENV = "GPUCR_FRONT_ACTIVE"


class FrontConfig:
    """The resolved configuration; ``values`` keeps every key of the file (hooks read their own)."""

    __slots__ = ("real_criu", "log_dir", "hooks", "relay_always", "conf_file", "values")

    def __init__(self, real_criu: str = DEFAULT_REAL_CRIU, log_dir: str | None = DEFAULT_LOG_DIR,
                 hooks: str | None = None, relay_always: bool = False, conf_file: str | None = None,
                 values: dict[str, str] | None = None) -> None:
        self.real_criu, self.log_dir, self.hooks, self.relay_always = real_criu, log_dir, hooks, relay_always
        self.conf_file, self.values = conf_file, values or {}


def parse_conf(text: str, where: str = "front.conf") -> dict[str, str]:
    """``key = value`` lines into a dict.

    Raises:
        FrontError: a line without ``=``, naming the file and line.
    """
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FrontError(f"{where}:{n}: expected 'key = value', got {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _relay_mode(value: str, where: str | None) -> bool:
    if value not in ("auto", "always"):
        raise FrontError(f"relay = {value!r} in {where or 'GPUCR_FRONT_RELAY'}: expected 'auto' (relay only what the "
                         "hooks want) or 'always'")
    return value == "always"


def load(env: dict[str, str] | os._Environ[str], argv0: str) -> FrontConfig:
    """Resolve the configuration for a front started as ``argv0``.

    Raises:
        FrontError: an unreadable or malformed configuration file, or a real criu that is this front itself.
    """
    candidates = [env.get("GPUCR_FRONT_CONF") or None, os.path.join(os.path.dirname(argv0), "front.conf")
                  if os.sep in argv0 else None, SYSTEM_CONF]
    values: dict[str, str] = {}
    conf_file = None
    for path in candidates:
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    values = parse_conf(f.read(), path)
            except OSError as exc:
                raise FrontError(f"cannot read the CRIU front's configuration {path}: {exc}") from exc
            conf_file = path
            break
    cfg = FrontConfig(
        real_criu=env.get("GPUCR_REAL_CRIU") or values.get("real_criu") or DEFAULT_REAL_CRIU,
        log_dir=env.get("GPUCR_FRONT_LOG_DIR") or values.get("log_dir") or DEFAULT_LOG_DIR,
        hooks=env.get("GPUCR_FRONT_HOOKS") or values.get("hooks") or None,
        relay_always=_relay_mode(env.get("GPUCR_FRONT_RELAY") or values.get("relay") or "auto", conf_file),
        conf_file=conf_file, values=values)
    if not os.path.isabs(cfg.real_criu):
        where = conf_file or "the environment"
        raise FrontError(f"real_criu must be an absolute path, got {cfg.real_criu!r} (from {where}): the front never "
                         "searches PATH, where it would find itself")
    me = os.path.realpath(argv0) if os.sep in argv0 else None
    if me and os.path.realpath(cfg.real_criu) == me:
        raise FrontError(f"real_criu {cfg.real_criu} is the CRIU front itself ({me}); set real_criu in "
                         f"{conf_file or SYSTEM_CONF} to the real criu binary (e.g. /usr/sbin/criu)")
    if env.get(ACTIVE_ENV):
        raise FrontError(f"the CRIU front was started by a process it started ({ACTIVE_ENV} is set): real_criu "
                         f"{cfg.real_criu} leads back to the front; point it at the real criu binary")
    return cfg


def load_hooks(spec: str, values: dict[str, str]) -> object:
    """Import ``module:callable`` and call it with the configuration values; returns the hooks object.

    Raises:
        FrontError: the spec is malformed or the import or call fails.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise FrontError(f"hooks = {spec!r}: expected 'module:callable'")
    import importlib
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
        return factory(values)
    except Exception as exc:  # a broken hook plug-in is a configuration error with its cause
        raise FrontError(f"cannot load the front's hooks {spec!r}: {type(exc).__name__}: {exc}") from exc
