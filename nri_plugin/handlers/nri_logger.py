"""A lifecycle-logging plugin: subscribes to every container and pod event containerd 1.7/2.1 delivers and logs it.

This is what ``gpucr plugin`` runs until gpucr's checkpoint policy plugin replaces it (same shape: a class with
``async`` handlers). Like NRI's sample ``logger`` plugin it can also inject annotations and env into every container,
from a JSON config (``--config FILE`` or the runtime's ``conf.d/NN-name.conf``, passed in Configure)::

    {"annotations": {"example.com/by": "gpucr"}, "env": {"GPUCR_SEEN": "1"}}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from ..nri.api import Adjustment, pb
from ..nri.errors import PluginError

__all__ = ["LifecycleLogger", "LoggerConfig"]

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig:
    annotations: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, source: str) -> LoggerConfig:
        """Raises PluginError naming ``source`` when the JSON is invalid."""
        if not text.strip():
            return cls()
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or set(raw) - {"annotations", "env"}:
                raise ValueError('expected an object with only "annotations" and "env"')
            cfg = cls({str(k): str(v) for k, v in raw.get("annotations", {}).items()},
                      {str(k): str(v) for k, v in raw.get("env", {}).items()})
        except (ValueError, AttributeError) as exc:
            raise PluginError(f"invalid plugin config in {source}: {exc}") from exc
        return cfg


def _ctr(c: pb.Container) -> str:
    return f"container {c.name or '?'} ({c.id[:12]})"


def _pod(p: pb.PodSandbox) -> str:
    return f"pod {p.namespace}/{p.name} ({p.id[:12]})"


class LifecycleLogger:
    """Log every lifecycle event; optionally adjust every created container."""

    def __init__(self, config: LoggerConfig | None = None) -> None:
        self.config = config or LoggerConfig()

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        if config.strip():
            self.config = LoggerConfig.parse(config, "the runtime's plugin config (conf.d)")
        log.info("runtime %s %s; injecting annotations %s, env %s", runtime_name, runtime_version,
                 sorted(self.config.annotations), sorted(self.config.env))

    async def synchronize(self, pods: list[pb.PodSandbox], containers: list[pb.Container]) -> None:
        for p in pods:
            log.info("existing %s", _pod(p))
        for c in containers:
            log.info("existing %s in pod %s, state %s", _ctr(c), c.pod_sandbox_id[:12],
                     pb.ContainerState.Name(c.state))

    async def run_pod_sandbox(self, p: pb.PodSandbox) -> None:
        log.info("run %s", _pod(p))

    async def stop_pod_sandbox(self, p: pb.PodSandbox) -> None:
        log.info("stop %s", _pod(p))

    async def remove_pod_sandbox(self, p: pb.PodSandbox) -> None:
        log.info("remove %s", _pod(p))

    async def create_container(self, p: pb.PodSandbox, c: pb.Container) -> Adjustment | None:
        log.info("create %s in %s", _ctr(c), _pod(p))
        if not (self.config.annotations or self.config.env):
            return None
        return Adjustment().update(annotations=self.config.annotations, env=self.config.env)

    async def post_create_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("created %s", _ctr(c))

    async def start_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("start %s", _ctr(c))

    async def post_start_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("started %s, pid %d", _ctr(c), c.pid)

    async def update_container(self, p: pb.PodSandbox, c: pb.Container, r: pb.LinuxResources) -> None:
        log.info("update %s", _ctr(c))

    async def post_update_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("updated %s", _ctr(c))

    async def stop_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("stop %s", _ctr(c))

    async def remove_container(self, p: pb.PodSandbox, c: pb.Container) -> None:
        log.info("remove %s", _ctr(c))
