"""The checkpoint policy for one container, decided when it is created.

Pure: a runtime-neutral view of the container in, a :class:`Decision` out (managed or not and why, the validated
annotation policy, the GPUs it asked for, and the CRIU options it needs). The NRI plugin turns a decision into a spec
adjustment and a state record; nothing here touches files or the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .annotations import AnnotationError, ContainerPolicy, parse_annotations
from .config import NodeConfig
from .criu_conf import CriuOption
from .gpu import GpuRequest, detect_gpus

__all__ = ["DEFAULT_KEEP", "ContainerView", "Decision", "MountView", "Periodic", "decide"]

#: periodic checkpoints kept when gpucr.io/checkpoint-keep does not say
DEFAULT_KEEP = 3

_PROPAGATION = {"shared", "rshared", "slave", "rslave"}


@dataclass(frozen=True)
class MountView:
    destination: str
    type: str = "bind"
    source: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerView:
    id: str
    name: str
    pod_id: str = ""
    pod_name: str = ""
    pod_namespace: str = ""
    pod_annotations: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Sequence[str] = ()
    devices: Sequence[str] = ()
    cdi_devices: Sequence[str] = ()
    mounts: Sequence[MountView] = ()
    #: the pid namespace the container joins by path (a pod's shared one), "" when it gets its own
    pid_ns: str = ""

    def describe(self) -> str:
        pod = f"{self.pod_namespace}/{self.pod_name}" if self.pod_name else self.pod_id[:12]
        return f"container {self.name or self.id[:12]} in pod {pod}"


@dataclass(frozen=True)
class Periodic:
    """The periodic checkpoints a container asked for (gpucr.io/checkpoint-interval, -keep), within the node's limits."""

    interval_s: int
    keep: int


@dataclass(frozen=True)
class Decision:
    managed: bool
    reason: str
    policy: ContainerPolicy
    gpu: GpuRequest
    criu_options: tuple[CriuOption, ...] = ()
    warnings: tuple[str, ...] = ()
    #: periodic checkpoints the plugin daemon takes of the running container (None: none)
    periodic: Periodic | None = None


def decide(view: ContainerView, node: NodeConfig) -> Decision:
    """Decide whether gpucr manages ``view`` and with which CRIU options.

    Raises:
        AnnotationError: a ``gpucr.io/`` annotation is unknown or invalid and the node config says "fail".
    """
    warnings: list[str] = []

    def warn(err: AnnotationError) -> None:
        warnings.append(f"{err} (ignored: annotation_errors = \"warn\")")

    policy = parse_annotations(view.pod_annotations, view.annotations, what=view.describe(),
                               on_error=warn if node.annotation_errors == "warn" else None)
    gpu = detect_gpus(view.env, view.devices, view.cdi_devices, [m.destination for m in view.mounts])
    try:
        periodic = _periodic(view, policy, node, warnings)
    except AnnotationError as err:
        if node.annotation_errors != "warn":
            raise
        warn(err)
        periodic = None
    if policy.restore_from:
        # a restore needs gpucr's CRIU config and record (the CUDA restore reads the GPU map from it)
        managed, reason = True, f"annotation gpucr.io/restore-from={policy.restore_from}"
    elif policy.checkpoint is True:
        managed, reason = True, "annotation gpucr.io/checkpoint=enabled"
    elif periodic is not None:
        managed, reason = True, f"annotation gpucr.io/checkpoint-interval={periodic.interval_s}s"
    elif policy.checkpoint is False:
        managed, reason = False, "annotation gpucr.io/checkpoint=disabled"
    elif node.manage_gpu_containers and gpu.is_gpu:
        managed, reason = True, f"node manages GPU containers ({'; '.join(gpu.reasons)})"
    else:
        managed = False
        reason = ("GPU container, but the node manages only opted-in containers" if gpu.is_gpu
                  else "not opted in (no gpucr.io/checkpoint annotation)")
    opts = _criu_options(view, policy, gpu) if managed else ()
    return Decision(managed, reason, policy, gpu, opts, tuple(warnings), periodic if managed else None)


def _periodic(view: ContainerView, policy: ContainerPolicy, node: NodeConfig, warnings: list[str]) -> Periodic | None:
    """gpucr.io/checkpoint-interval and -keep checked against the node's limits.

    Raises:
        AnnotationError: the interval is below ``checkpoint_interval_min_s``, keep above ``checkpoint_keep_max``,
            keep without an interval, or an interval on a container that opts out.
    """
    interval, keep = policy.checkpoint_interval_s, policy.checkpoint_keep
    what = view.describe()
    if interval is None:
        if keep is not None:
            raise AnnotationError("gpucr.io/checkpoint-keep", f"{what}: annotation gpucr.io/checkpoint-keep={keep} "
                                  "without gpucr.io/checkpoint-interval; add the interval (e.g. 15m) or remove it")
        return None
    if policy.checkpoint is False:
        raise AnnotationError("gpucr.io/checkpoint-interval", f"{what}: annotation gpucr.io/checkpoint-interval "
                              "contradicts gpucr.io/checkpoint=disabled; remove one of them")
    if interval < node.checkpoint_interval_min_s:
        raise AnnotationError("gpucr.io/checkpoint-interval", f"{what}: annotation gpucr.io/checkpoint-interval="
                              f"{interval}s is invalid; accepted: at least {node.checkpoint_interval_min_s:g}s (the "
                              "node's checkpoint_interval_min_s)")
    if keep is not None and keep > node.checkpoint_keep_max:
        raise AnnotationError("gpucr.io/checkpoint-keep", f"{what}: annotation gpucr.io/checkpoint-keep={keep} is "
                              f"invalid; accepted: 1 to {int(node.checkpoint_keep_max)} (the node's "
                              "checkpoint_keep_max)")
    if not node.periodic_checkpoints:
        warnings.append(f"{what}: gpucr.io/checkpoint-interval ignored: the node has periodic_checkpoints = false")
        return None
    return Periodic(interval, keep or min(DEFAULT_KEEP, int(node.checkpoint_keep_max)))


def _criu_options(view: ContainerView, policy: ContainerPolicy, gpu: GpuRequest) -> tuple[CriuOption, ...]:
    opts: list[CriuOption] = []
    if policy.force_irmap is not False:
        opts.append(CriuOption("force-irmap", comment="inotify watches on overlayfs have no stable file handles"))
    opts.append(CriuOption("link-remap", comment="open files that were unlinked (Python temp files, sockets)"))
    if policy.tcp_established:
        opts.append(CriuOption("tcp-established", comment="gpucr.io/tcp-established"))
    if policy.file_locks:
        opts.append(CriuOption("file-locks", comment="gpucr.io/file-locks"))
    if policy.ext_unix_sk:
        opts.append(CriuOption("ext-unix-sk", comment="gpucr.io/ext-unix-sk"))
    if policy.criu_timeout_s:
        opts.append(CriuOption("timeout", str(policy.criu_timeout_s), comment="gpucr.io/criu-timeout"))
    if gpu.is_gpu:
        # driver mounts (e.g. /usr/local/nvidia under a bind of /usr) are submounts runc does not name: let CRIU
        # treat them as external on dump, and map them back automatically on restore (the same file serves both)
        opts.append(CriuOption("external", "mnt[]", comment="driver submounts become external mounts on dump"))
        opts.append(CriuOption("ext-mount-map", "auto", comment="and are mapped back on restore"))
    if any(_PROPAGATION & set(m.options) for m in view.mounts):
        opts.append(CriuOption("enable-external-masters", comment="slave mount propagation in the spec"))
        opts.append(CriuOption("enable-external-sharing", comment="shared mount propagation in the spec"))
    return tuple(opts)
