"""Where the front finds the real criu, its log dir and its hooks.

Sources, highest first: the environment (``GPUCR_REAL_CRIU``, ``GPUCR_FRONT_LOG_DIR``, ``GPUCR_FRONT_CACHE_DIR``,
``GPUCR_FRONT_HOOKS``), then
the first configuration file that exists of ``$GPUCR_FRONT_CONF``, ``front.conf`` beside the ``criu`` the runtime
ran (the route directory install/front.sh makes, so each containerd instance can have its own), and
``/etc/gpucr/front.conf``; then the defaults. The file holds ``key = value`` lines (``real_criu``, ``log_dir``,
``cache_dir``, ``hooks``, ``relay = auto|always``, and any key a hook wants), ``#`` comments, optional quotes: simple
enough to parse without tomllib on the start-up path. The file is checked before it is read (root-owned, not
group/world-writable, nor any directory above it: :mod:`.trust`). The real criu is never found through PATH, so the
front cannot recurse onto itself.
"""

from __future__ import annotations

import os

from .errors import FrontError

__all__ = ["ACTIVE_ENV", "DEFAULT_CACHE_DIR", "DEFAULT_LOG_DIR", "DEFAULT_REAL_CRIU", "RETIRED_HOOKS", "SYSTEM_CONF",
           "FrontConfig", "load", "load_hooks", "parse_conf"]

DEFAULT_REAL_CRIU = "/usr/sbin/criu"
DEFAULT_LOG_DIR = "/var/log/gpucr"
#: root-only (0700) home of the front's caches (the real criu's VERSION answer, the hooks' node-config values)
DEFAULT_CACHE_DIR = "/var/lib/gpucr/front"
SYSTEM_CONF = "/etc/gpucr/front.conf"
#: set in the real criu's environment; a front that finds it set was started by criu or by itself
ACTIVE_ENV = "GPUCR_FRONT_ACTIVE"
#: hooks modules gpucr no longer ships -> the module that replaced them (a front.conf written earlier may name one)
RETIRED_HOOKS = {"nri_plugin.gpufront": "nri_plugin.handlers.front_cuda"}


class FrontConfig:
    """The resolved configuration; ``values`` keeps every key of the file (hooks read their own) plus the resolved
    ``log_dir`` and ``cache_dir``."""

    __slots__ = ("real_criu", "log_dir", "cache_dir", "hooks", "relay_always", "conf_file", "values")

    def __init__(self, real_criu: str = DEFAULT_REAL_CRIU, log_dir: str | None = DEFAULT_LOG_DIR,
                 hooks: str | None = None, relay_always: bool = False, conf_file: str | None = None,
                 values: dict[str, str] | None = None, cache_dir: str | None = DEFAULT_CACHE_DIR) -> None:
        self.real_criu, self.log_dir, self.hooks, self.relay_always = real_criu, log_dir, hooks, relay_always
        self.cache_dir = cache_dir
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


def load(env: dict[str, str] | os._Environ[str], argv0: str, check: bool = True) -> FrontConfig:
    """Resolve the configuration for a front started as ``argv0``; ``check=False`` skips the ownership check
    (unit tests of the format only).

    Raises:
        FrontError: a configuration file that root does not own alone (before it is read), an unreadable or
            malformed one, or a real criu that is this front itself.
    """
    candidates = [env.get("GPUCR_FRONT_CONF") or None, os.path.join(os.path.dirname(argv0), "front.conf")
                  if os.sep in argv0 else None, SYSTEM_CONF]
    values: dict[str, str] = {}
    conf_file = None
    for path in candidates:
        if path and os.path.exists(path):
            if check:
                from .trust import path_problem
                problem = path_problem(path, "the configuration file")
                if problem:
                    raise FrontError(problem)
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
        conf_file=conf_file, values=dict(values),
        cache_dir=env.get("GPUCR_FRONT_CACHE_DIR") or values.get("cache_dir") or DEFAULT_CACHE_DIR)
    cfg.values["log_dir"], cfg.values["cache_dir"] = cfg.log_dir or "", cfg.cache_dir or ""
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


def load_hooks(spec: str, values: dict[str, str], check: bool = True, where: str = "front.conf") -> object:
    """Import ``module:callable`` and call it with the configuration values; returns the hooks object. A module
    outside ``nri_plugin`` (whose tree the front checked at start) has its top-level package checked first.
    ``where`` names the spec's source for the error messages.

    Raises:
        FrontError: the spec is malformed or names a retired module, the module's code is not root's alone, or the
            import or call fails.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise FrontError(f"hooks = {spec!r}: expected 'module:callable'")
    if mod_name in RETIRED_HOOKS:
        raise FrontError(f"hooks = {spec} in {where} names a module gpucr no longer ships; fix: set hooks = "
                         f"{RETIRED_HOOKS[mod_name]}:{attr} there (install/front.sh writes it)")
    import importlib
    top = mod_name.partition(".")[0]
    if check and top != "nri_plugin":
        from importlib.machinery import PathFinder

        from .trust import path_problem, tree_problem
        found = PathFinder.find_spec(top)
        problem = None
        if found is not None and found.submodule_search_locations:
            problem = tree_problem(list(found.submodule_search_locations)[0], "the front's hooks")
        elif found is not None and found.origin:
            problem = path_problem(found.origin, "the front's hooks")
        if problem:
            raise FrontError(problem)
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
        return factory(values)
    except Exception as exc:  # a broken hook plug-in is a configuration error with its cause
        raise FrontError(f"cannot load the front's hooks {spec!r}: {type(exc).__name__}: {exc}") from exc
