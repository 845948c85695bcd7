"""Builders for what a plugin sends back: ContainerAdjustment, ContainerUpdate, ContainerEviction.

Mirrors the Go ``api.ContainerAdjustment`` helpers (``AddAnnotation``, ``RemoveEnv``, ``AddMount``, ``AddHooks``,
``AddDevice``...), including NRI's removal convention: a key, destination or path prefixed with ``-`` deletes that
entry (``nri/pkg/api/helpers.go``). Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ._pb import api_pb2 as pb

__all__ = ["Adjustment", "container_update", "eviction", "hook"]

_HOOK_KINDS = ("prestart", "create_runtime", "create_container", "start_container", "poststart", "poststop")


def hook(path: str, args: Sequence[str] = (), env: Sequence[str] = (), timeout_s: int | None = None) -> pb.Hook:
    """An OCI hook; ``args`` conventionally starts with the program name (as OCI's ``args``)."""
    h = pb.Hook(path=path, args=list(args), env=list(env))
    if timeout_s is not None:
        h.timeout.value = timeout_s
    return h


class Adjustment:
    """Fluent builder; :attr:`pb` is the ContainerAdjustment to return from ``create_container``."""

    def __init__(self) -> None:
        self.pb = pb.ContainerAdjustment()

    def add_annotation(self, key: str, value: str) -> Adjustment:
        self.pb.annotations[key] = value
        return self

    def remove_annotation(self, key: str) -> Adjustment:
        self.pb.annotations["-" + key] = ""
        return self

    def add_env(self, key: str, value: str) -> Adjustment:
        self.pb.env.append(pb.KeyValue(key=key, value=value))
        return self

    def remove_env(self, key: str) -> Adjustment:
        self.pb.env.append(pb.KeyValue(key="-" + key))
        return self

    def add_mount(self, source: str, destination: str, *, type: str = "bind",
                  options: Iterable[str] = ("rbind", "rw")) -> Adjustment:
        self.pb.mounts.append(pb.Mount(source=source, destination=destination, type=type, options=list(options)))
        return self

    def remove_mount(self, destination: str) -> Adjustment:
        self.pb.mounts.append(pb.Mount(destination="-" + destination))
        return self

    def add_hook(self, kind: str, h: pb.Hook) -> Adjustment:
        """Append ``h`` to one OCI hook list (``prestart``, ``create_runtime``, ..., ``poststop``)."""
        if kind not in _HOOK_KINDS:
            raise ValueError(f"unknown OCI hook kind {kind!r} (one of {', '.join(_HOOK_KINDS)})")
        getattr(self.pb.hooks, kind).append(h)
        return self

    def add_device(self, path: str, type: str, major: int, minor: int, *, file_mode: int | None = None,
                   uid: int | None = None, gid: int | None = None) -> Adjustment:
        d = pb.LinuxDevice(path=path, type=type, major=major, minor=minor)
        if file_mode is not None:
            d.file_mode.value = file_mode
        if uid is not None:
            d.uid.value = uid
        if gid is not None:
            d.gid.value = gid
        self.pb.linux.devices.append(d)
        return self

    def remove_device(self, path: str) -> Adjustment:
        self.pb.linux.devices.append(pb.LinuxDevice(path="-" + path))
        return self

    def add_rlimit(self, type: str, hard: int, soft: int) -> Adjustment:
        self.pb.rlimits.append(pb.POSIXRlimit(type=type, hard=hard, soft=soft))
        return self

    def add_cdi_device(self, name: str) -> Adjustment:
        """Only containerd >= 2.1 applies CDI devices (older runtimes ignore the field)."""
        self.pb.CDI_devices.append(pb.CDIDevice(name=name))
        return self

    def update(self, annotations: Mapping[str, str] = {}, env: Mapping[str, str] = {}) -> Adjustment:  # noqa: B006
        for k, v in annotations.items():
            self.add_annotation(k, v)
        for k, v in env.items():
            self.add_env(k, v)
        return self


def container_update(container_id: str, resources: pb.LinuxResources | None = None, *,
                     ignore_failure: bool = False) -> pb.ContainerUpdate:
    """A ContainerUpdate (only Linux resources are updatable)."""
    u = pb.ContainerUpdate(container_id=container_id, ignore_failure=ignore_failure)
    if resources is not None:
        u.linux.resources.CopyFrom(resources)
    return u


def eviction(container_id: str, reason: str) -> pb.ContainerEviction:
    return pb.ContainerEviction(container_id=container_id, reason=reason)
