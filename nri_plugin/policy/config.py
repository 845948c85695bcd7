"""The node's gpucr configuration (``/etc/gpucr/config.toml``): which containers are managed and where state lives.

Every key has a safe default, so a node without the file behaves sensibly: only containers that opt in by annotation
are managed, bad ``gpucr.io/`` annotations fail the container's creation, and a dump that meets CUDA state in an
unmanaged container is still made GPU-safe (``unmanaged_cuda = "protect"``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import GpucrError

__all__ = ["DEFAULT_CONFIG_PATH", "ConfigError", "NodeConfig", "load_config"]

DEFAULT_CONFIG_PATH = Path("/etc/gpucr/config.toml")

_CHOICES = {
    "annotation_errors": ("fail", "warn"),
    "unmanaged_cuda": ("protect", "ignore"),
    "driver_thp": ("keep", "always"),
    "dump_via_memory": ("leave-running", "always", "never"),
}

#: string keys holding a path: absolute, or "" for the default
_ABSOLUTE_OR_EMPTY = frozenset({"criu_path"})


class ConfigError(GpucrError):
    """The node configuration is unreadable or holds a bad key or value."""


@dataclass(frozen=True)
class NodeConfig:
    """Node-wide policy. Field names are the TOML keys."""

    #: manage every container that looks like a GPU container (NVIDIA env, /dev/nvidia* devices, CDI names)
    manage_gpu_containers: bool = False
    #: a bad gpucr.io/ annotation: "fail" the creation (default) or "warn" and ignore it
    annotation_errors: str = "fail"
    #: a dump meeting CUDA state in a container gpucr did not manage: "protect" it anyway, or "ignore"
    unmanaged_cuda: str = "protect"
    #: per-container records for the CRIU front (created 0700)
    state_dir: Path = Path("/run/gpucr")
    #: where gpucr writes per-container CRIU configuration files; persistent, since restoring a checkpoint reads its
    #: file again, possibly after a reboot
    criu_config_dir: Path = Path("/var/lib/gpucr/criu")
    #: the CRIU configuration runc reads by default; merged into ours, never overridden
    runc_criu_config: Path = Path("/etc/criu/runc.conf")
    #: `gpucr checkpoint --to` and `gpucr restore DIR` must lie under this root (symlinks resolved)
    checkpoint_root: Path = Path("/var/lib/gpucr/checkpoints")
    #: libcuda to use ("" = the system's libcuda.so.1)
    libcuda: str = ""
    #: CUDA lock timeout passed to the driver (the front's and the CLI's default)
    lock_timeout_ms: int = 10_000
    #: gpucr's own watchdog on every driver call into a process
    driver_call_timeout_s: float = 120.0
    #: transparent hugepages during the driver's GPU<->host copies: "keep" the node's mode, or "always" for the
    #: duration of the copies (1.5-1.8x faster; the node's mode is put back afterwards; nri_plugin/host/thp.py)
    driver_thp: str = "keep"
    #: absolute path of the hook binary injected into managed containers' OCI hooks ("" = no hooks)
    hook_path: str = "/usr/libexec/gpucr/gpucr-hook"
    #: HOST:PORT where the plugin daemon serves Prometheus metrics ("" = none; nri_plugin/handlers/metrics.py)
    metrics_address: str = ""
    #: how often the plugin daemon looks for leases of checkpoints whose holder died (or overran a phase)
    lease_sweep_interval_s: float = 5.0
    #: per-phase deadlines of a checkpoint's critical section (the lock's is lock_timeout_ms plus a margin; a
    #: container's gpucr.io/phase-timeouts may only shorten them): copying GPU memory to host
    cuda_checkpoint_timeout_s: float = 600.0
    #: deadline of CRIU's dump while the CUDA processes are checkpointed
    criu_dump_timeout_s: float = 600.0
    #: deadline of copying GPU memory back (after a dump with leave-running, or a restore)
    cuda_restore_timeout_s: float = 600.0
    #: deadline of unlocking CUDA in the processes
    cuda_unlock_timeout_s: float = 60.0
    #: take the periodic checkpoints that containers ask for with gpucr.io/checkpoint-interval (false: none are
    #: taken; such containers still start, with a warning)
    periodic_checkpoints: bool = True
    #: the shortest gpucr.io/checkpoint-interval accepted; a shorter one fails the container's creation
    checkpoint_interval_min_s: float = 60.0
    #: the most periodic checkpoints a container may keep (gpucr.io/checkpoint-keep; default 3)
    checkpoint_keep_max: int = 10
    #: containerd's socket, through which the daemon takes periodic checkpoints (CRI and its task API)
    containerd_address: Path = Path("/run/containerd/containerd.sock")
    #: `gpucr checkpoint` dumps into a private tmpfs first and writes the images to disk while and after CRIU dumps,
    #: when the node has the memory: "always" (default), only for "leave-running" checkpoints, or "never"
    dump_via_memory: str = "always"
    #: the CRIU gpucr's front runs ("" = gpucr-criu's /usr/lib/gpucr/criu/criu when installed, else criu on PATH);
    #: a restore through gpucr.io/restore-from is refused when the checkpoint was dumped by a newer CRIU than this
    criu_path: str = ""
    #: accept a restore through gpucr.io/restore-from of a checkpoint dumped on a newer kernel (major.minor) than
    #: this node's (false: refused, since CRIU may have saved state that an older kernel cannot restore)
    restore_allow_older_kernel: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def phase_budgets(self, lock_timeout_ms: int | None = None,
                      asked: Iterable[tuple[str, float]] = ()) -> dict[str, float]:
        """Each phase's deadline in seconds, for the lease of a checkpoint: the node's, or what the container asked
        (``lock_timeout_ms``; ``asked``: its gpucr.io/phase-timeouts) when that is shorter (the node caps it)."""
        lock_s = (lock_timeout_ms or self.lock_timeout_ms) / 1000
        out = {"cuda-lock": lock_s + 30.0, "cuda-checkpoint": self.cuda_checkpoint_timeout_s,
               "criu-dump": self.criu_dump_timeout_s, "cuda-restore": self.cuda_restore_timeout_s,
               "cuda-unlock": self.cuda_unlock_timeout_s}
        for phase, secs in asked:
            if phase in out:
                out[phase] = min(out[phase], float(secs))
        return out

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "<config>") -> NodeConfig:
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        for name, value in data.items():
            default = getattr(cls, name)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{source}: {name} must be true or false, not {value!r}")
            elif isinstance(default, Path):
                if not isinstance(value, str) or not value.startswith("/"):
                    raise ConfigError(f"{source}: {name} must be an absolute path, not {value!r}")
                value = Path(value)
            elif isinstance(default, (int, float)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"{source}: {name} must be a positive number, not {value!r}")
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise ConfigError(f"{source}: {name} must be a string, not {value!r}")
                if name in _ABSOLUTE_OR_EMPTY and value and not value.startswith("/"):
                    raise ConfigError(f"{source}: {name} must be an absolute path or \"\", not {value!r}")
                if name in _CHOICES and value not in _CHOICES[name]:
                    raise ConfigError(f"{source}: {name} = {value!r}; accepted: {', '.join(_CHOICES[name])}")
            kw[name] = value
        return cls(**kw)


def load_config(path: Path | None = None) -> NodeConfig:
    """Load the node config; a missing file at the default path means all defaults.

    Raises:
        ConfigError: the file is unreadable, not TOML, or has a bad key or value (the message names which).
    """
    explicit = path is not None
    path = path or DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {path} does not exist") from None
        return NodeConfig()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return NodeConfig.from_mapping(data, str(path))
