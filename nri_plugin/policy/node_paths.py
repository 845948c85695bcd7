"""Which of the node config's paths gpucr may use: each is checked once (at the plugin's Configure), and an unsafe or
missing one is reported with its fix and left unused, never trusted, so the node keeps working with safe behaviour.

What runs or is read as root must be root's alone (:func:`nri_plugin.host.paths.root_path_problem`): the OCI hook
runc runs for every managed container (``hook_path``), the CRIU configuration runc hands to CRIU (``criu_config_dir``,
``runc_criu_config``), the records the CRIU front trusts (``state_dir``), the driver library the front loads
(``libcuda``), the checkpoints (``checkpoint_root``). What gpucr does without each:

* ``hook_path`` missing or unsafe: no OCI hooks are injected; the front finds the container from ``/proc`` (the
  dumped pid's cgroup names it) without the pid and cgroup the hook would have recorded.
* ``state_dir`` unsafe: no records and no hooks; the front then treats managed containers as unmanaged
  (``unmanaged_cuda = "protect"``, the default, still makes their dumps GPU-safe).
* ``criu_config_dir`` unsafe: no ``org.criu.config`` from gpucr (the container's CRIU options are not applied).
* ``runc_criu_config`` unsafe: not merged into gpucr's CRIU options (missing is normal: nothing to merge).
* ``libcuda`` (absolute) or ``checkpoint_root`` unsafe or missing: reported (the plugin does not use them; the CRIU
  front and the CLI do).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..host.paths import DIR, EXEC, FILE, PathProblem, root_path_problem
from .config import NodeConfig

__all__ = ["HOOK_FIX", "NodePaths", "check_node_paths"]

HOOK_FIX = ("install it with `install/hook.sh install` (or gpucr's package), or set hook_path = \"\" in "
            "/etc/gpucr/config.toml to run without hooks")
_DIR_FIX = "chown root:root {c}; chmod go-w {c} (or choose another {key} in /etc/gpucr/config.toml)"


@dataclass(frozen=True)
class NodePaths:
    """The verdict: what may be used, and one line per problem (naming the key, the path, why, and the fix)."""

    hooks: bool
    records: bool
    criu_config: bool
    runc_criu_config: bool
    problems: tuple[str, ...] = ()


def _fix(key: str, problem: PathProblem) -> str:
    if problem.unsafe:
        return _DIR_FIX.format(c=problem.component, key=key)
    return f"make it (as root), or choose another {key} in /etc/gpucr/config.toml"


def check_node_paths(cfg: NodeConfig) -> NodePaths:
    """Judge every path of ``cfg``; cheap (a few stat calls), so callers may repeat it to notice an install."""
    problems: list[str] = []

    def judge(key: str, path: str, kind: str, required: bool, without: str) -> bool:
        problem = root_path_problem(path, kind, required=required)
        if problem is None:
            return True
        fix = HOOK_FIX if key == "hook_path" and not problem.unsafe else _fix(key, problem)
        problems.append(f"{key} {path} is unusable: {problem}; {without}; fix: {fix}")
        return False

    records = judge("state_dir", str(cfg.state_dir), DIR, False,
                    "gpucr writes no records and injects no hooks (the CRIU front treats managed containers as "
                    f"unmanaged: unmanaged_cuda = {cfg.unmanaged_cuda!r})")
    hooks = bool(cfg.hook_path) and records and judge(
        "hook_path", cfg.hook_path, EXEC, True,
        "gpucr injects no OCI hooks (managed containers start without them; the CRIU front finds them from /proc)")
    criu = judge("criu_config_dir", str(cfg.criu_config_dir), DIR, False,
                 "managed containers get no CRIU configuration from gpucr (their gpucr.io/ CRIU options are not "
                 "applied)")
    runc = judge("runc_criu_config", str(cfg.runc_criu_config), FILE, False,
                 "it is not merged into gpucr's CRIU options")
    judge("checkpoint_root", str(cfg.checkpoint_root), DIR, False, "the CLI writes checkpoints under it")
    if cfg.libcuda.startswith("/"):
        judge("libcuda", cfg.libcuda, FILE, True, "the CRIU front and the CLI load the CUDA driver from it as root")
    return NodePaths(hooks, records, criu, runc, tuple(problems))
