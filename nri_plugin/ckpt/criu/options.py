"""What a caller may ask of a CRIU dump or restore, as plain frozen dataclasses.

These are gpucr's names for CRIU's options (``criu dump --help`` spelling in each field's comment). They carry no
file descriptors: the client opens the images and work directories itself, because CRIU opens them through
``/proc/<peer pid>/fd/N`` of whoever talks to it (SO_PEERCRED), so the numbers only make sense in that process.
Validation lives in :func:`nri_plugin.ckpt.criu.rpc.dump_request` / ``restore_request``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum, IntEnum
from pathlib import Path
from typing import Any

__all__ = ["CgroupMode", "DumpOptions", "JoinNamespace", "NetworkLock", "RestoreOptions", "as_record"]

DEFAULT_LOG_LEVEL = 4  # CRIU's -v4: debug; what runc uses, and what a failure report needs


class CgroupMode(IntEnum):
    """``--manage-cgroups MODE`` (CRIU rpc.proto ``criu_cg_mode``)."""

    IGNORE = 0
    NONE = 1
    PROPS = 2
    SOFT = 3
    FULL = 4
    STRICT = 5
    DEFAULT = 6


class NetworkLock(IntEnum):
    """``--network-lock METHOD`` (CRIU rpc.proto ``criu_network_lock_method``)."""

    IPTABLES = 1
    NFTABLES = 2
    SKIP = 3


@dataclass(frozen=True)
class JoinNamespace:
    """``--join-ns NS:FILE[,EXTRA]``: restore into an existing namespace (ns: net, ipc, uts, ...)."""

    ns: str
    ns_file: str
    extra_opt: str | None = None


@dataclass(frozen=True)
class _Common:
    images_dir: Path
    work_dir: Path | None = None            # -W; default: images_dir, so the log sits next to the images
    log_file: str = ""                       # -o; a bare name inside work_dir ("" = dump.log / restore.log)
    log_level: int = DEFAULT_LOG_LEVEL       # -v
    external_mounts: Mapping[str, str] = field(default_factory=dict)  # --external mnt[KEY]:VAL
    external: Sequence[str] = ()             # --external, verbatim ("dev[...]:...", "unix[INO]", "net[INO]:KEY")
    manage_cgroups: bool = False             # --manage-cgroups
    cgroups_mode: CgroupMode | None = None   # --manage-cgroups=MODE (implies manage_cgroups)
    tcp_established: bool = False            # --tcp-established
    ext_unix_sk: bool = False                # --ext-unix-sk
    file_locks: bool = False                 # --file-locks
    shell_job: bool = False                  # --shell-job
    orphan_pts_master: bool = False          # --orphan-pts-master
    evasive_devices: bool = False            # --evasive-devices
    root: str | None = None                  # --root
    empty_ns: int = 0                        # --empty-ns (CLONE_NEW* bits)
    network_lock: NetworkLock | None = None  # --network-lock
    config_file: str | None = None           # --config (parsed by CRIU after the RPC options; it wins)
    tcp_close: bool = False                  # --tcp-close


@dataclass(frozen=True)
class DumpOptions(_Common):
    """A ``criu dump`` of the tree rooted at ``pid``.

    ``leave_running`` keeps the tree running after the dump (otherwise CRIU kills it once the images are safe).
    ``freeze_cgroup`` makes CRIU freeze through that cgroup (v1 freezer dir or v2 cgroup dir) before seizing.
    ``ghost_limit`` is in bytes (CRIU's default is 1 MiB). ``timeout_s`` bounds CRIU's freeze/seize step.
    """

    pid: int = 0                             # -t
    leave_running: bool = False              # -R
    link_remap: bool = False                 # --link-remap
    ghost_limit: int | None = None           # --ghost-limit
    force_irmap: bool = False                # --force-irmap (inotify watches, e.g. PyTorch's)
    irmap_scan_paths: Sequence[str] = ()     # --irmap-scan-path
    freeze_cgroup: str | None = None         # --freeze-cgroup
    timeout_s: int | None = None             # --timeout
    tcp_skip_in_flight: bool = False         # --skip-in-flight
    skip_mounts: Sequence[str] = ()          # --skip-mnt


@dataclass(frozen=True)
class RestoreOptions(_Common):
    """A ``criu restore`` of the images in ``images_dir``; it always detaches (RPC restores are ``-d``).

    ``rst_sibling`` makes the restored root a child of the process that runs criu (us) instead of criu's: the
    caller then owns it and must reap it (``os.waitpid(result.pid, 0)``). Without it the root is reparented to the
    nearest subreaper (or init) when criu exits.
    ``inherit_fds`` maps a file key from the images (``pipe:[1234]``, ``tty[...]``) to an fd open *in this process*;
    the client passes it on to criu. ``cgroup_roots`` maps a controller (None: all) to the cgroup path to restore into.
    """

    rst_sibling: bool = False                # --restore-sibling
    inherit_fds: Mapping[str, int] = field(default_factory=dict)       # --inherit-fd fd[N]:KEY
    cgroup_roots: Mapping[str | None, str] = field(default_factory=dict)  # --cgroup-root [CTRL:]PATH
    join_ns: Sequence[JoinNamespace] = ()    # --join-ns
    lsm_profile: str | None = None           # --lsm-profile


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, Path):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {("" if k is None else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def as_record(opts: DumpOptions | RestoreOptions) -> dict[str, Any]:
    """The options as a JSON-able dict (paths as strings, enums by name), for a checkpoint's metadata."""
    rec: dict[str, Any] = _plain(opts)
    return rec
