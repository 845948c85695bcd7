"""gpucr's NRI plugin: the checkpoint policy applied to every container containerd creates through CRI.

This is the one outer-layer module that joins the NRI stub (``nri``) and the policy (``policy``). At CreateContainer
it decides whether gpucr manages the container; for a managed one it writes the per-container CRIU configuration
(merged with the user's), records the decision in the state dir for the CRIU front, and returns the spec adjustment:
``org.criu.config`` pointing at that file, plus the createRuntime/poststop OCI hooks that record the container's pid
and cgroup and clean up after it. A bad ``gpucr.io/`` annotation fails the creation with a message naming it.

The node config's paths are judged at Configure (:mod:`nri_plugin.policy.node_paths`): a missing or unsafe hook,
state dir or CRIU config dir is reported once with its fix and left unused, so managed containers still start (the
CRIU front finds them from ``/proc`` without the hook's pid and cgroup).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..nri import Adjustment, hook, pb
from ..policy import (
    ConfigError,
    ContainerRecord,
    ContainerView,
    Decision,
    MountView,
    NodeConfig,
    decide,
    merge_config,
    parse_config,
    remove_record,
    render_config,
    write_record,
)
from ..policy.node_paths import NodePaths, check_node_paths
from ..policy.records import RecordedGpus, RecordedPolicy, RecordError
from . import nri_restore

__all__ = ["CRIU_CONFIG_ANNOTATION", "PolicyPlugin", "container_view"]

log = logging.getLogger(__name__)

#: runc reads the CRIU configuration file for dump and restore from this annotation
CRIU_CONFIG_ANNOTATION = "org.criu.config"


def container_view(pod: pb.PodSandbox, ctr: pb.Container) -> ContainerView:
    """The runtime-neutral view the policy decides on."""
    return ContainerView(
        id=ctr.id, name=ctr.name, pod_id=pod.id, pod_name=pod.name, pod_namespace=pod.namespace,
        pod_annotations=dict(pod.annotations), annotations=dict(ctr.annotations), env=list(ctr.env),
        devices=[d.path for d in ctr.linux.devices],
        cdi_devices=[d.name for d in getattr(ctr, "CDI_devices", [])],
        mounts=[MountView(m.destination, m.type, m.source, tuple(m.options)) for m in ctr.mounts],
        pid_ns=next((n.path for n in ctr.linux.namespaces if n.type == "pid"), ""))


class PolicyPlugin:
    """NRI handlers: configure, synchronize, create_container, remove_container."""

    def __init__(self, node: NodeConfig | None = None) -> None:
        self.node = node or NodeConfig()
        self.runtime = ""
        self.paths: NodePaths | None = None

    def check_paths(self) -> NodePaths:
        """Judge the node config's paths (hook, state dir, CRIU config dirs...): a problem is logged once, when it
        appears, with its fix, and what it concerns is left unused; a fixed one (e.g. the hook installed while the
        plugin runs) is noticed at the next managed creation."""
        old = self.paths.problems if self.paths else ()
        self.paths = check_node_paths(self.node)
        for p in self.paths.problems:
            if p not in old:
                log.error("%s", p)
        for p in old:
            if p not in self.paths.problems:
                log.info("resolved: %s", p.split(";", 1)[0])
        return self.paths

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self.runtime = f"{runtime_name} {runtime_version}"
        if config.strip():
            import tomllib

            try:
                self.node = NodeConfig.from_mapping(tomllib.loads(config), "NRI plugin config")
            except (tomllib.TOMLDecodeError, ConfigError) as exc:
                raise ConfigError(f"invalid gpucr config passed by the runtime: {exc}") from exc
        self.paths = None
        paths = self.check_paths()
        log.info("configured by %s: manage_gpu_containers=%s, annotation_errors=%s, state dir %s, OCI hooks %s",
                 self.runtime, self.node.manage_gpu_containers, self.node.annotation_errors, self.node.state_dir,
                 self.node.hook_path if paths.hooks else "none")

    async def synchronize(self, pods: list[pb.PodSandbox], containers: list[pb.Container]) -> None:
        """Forget records of containers that no longer exist (removed while gpucr was down)."""
        live = {c.id for c in containers}
        rec_dir = self.node.state_dir / "containers"
        usable = (self.paths or self.check_paths()).records and rec_dir.is_dir()
        stale = [p for p in rec_dir.glob("*.json") if p.stem not in live] if usable else []
        for p in stale:
            self._forget(p.stem)
        tickets = self.node.state_dir / nri_restore.TICKETS
        for p in tickets.glob("*.json") if tickets.is_dir() else []:
            if p.stem not in live:  # a restore whose container is gone: drop its lock and staged images
                nri_restore.finish(self.node, p.stem)
        log.info("synchronized: %d pods, %d containers, %d stale records removed", len(pods), len(containers),
                 len(stale))

    async def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> Adjustment | None:
        view = container_view(pod, ctr)
        decision = decide(view, self.node)  # AnnotationError -> error status -> the creation fails with it
        for w in decision.warnings:
            log.warning("%s", w)
        if not decision.managed:
            log.debug("%s not managed: %s", view.describe(), decision.reason)
            return None
        plan = nri_restore.prepare(view, decision, self.node) if decision.policy.restore_from else None
        try:
            return self._adjust(pod, ctr, view, decision, plan)
        except BaseException:
            if plan is not None:
                nri_restore.finish(self.node, ctr.id)
            raise

    def _adjust(self, pod: pb.PodSandbox, ctr: pb.Container, view: ContainerView, decision: Decision,
                plan: nri_restore.RestorePlan | None) -> Adjustment:
        gpu_map = plan.gpu_map if plan is not None and plan.gpu_map else tuple(decision.policy.gpu_map)
        paths = self.check_paths()
        conf = self._write_criu_config(view, decision, paths) if paths.criu_config else None
        if paths.records:
            write_record(self.node.state_dir, ContainerRecord(
                container_id=ctr.id, name=ctr.name, pod_id=pod.id, pod_name=pod.name, pod_namespace=pod.namespace,
                managed=True, reason=decision.reason, criu_config=str(conf or ""), runtime=self.runtime,
                created_at=time.time(),
                gpus=RecordedGpus(decision.gpu.visible, tuple(decision.gpu.devices), tuple(decision.gpu.cdi),
                                  tuple(decision.gpu.reasons)),
                policy=RecordedPolicy(decision.policy.lock_timeout_ms or self.node.lock_timeout_ms,
                                      tuple(gpu_map), dict(decision.policy.source),
                                      tuple(decision.policy.phase_timeouts))))
        adj = Adjustment()
        if conf is not None:
            if CRIU_CONFIG_ANNOTATION in ctr.annotations:
                adj.remove_annotation(CRIU_CONFIG_ANNOTATION)  # take over the user's entry; its content is merged
            adj.add_annotation(CRIU_CONFIG_ANNOTATION, str(conf))
        if paths.hooks:
            for stage, kind in (("create-runtime", "create_runtime"), ("poststop", "poststop")):
                adj.add_hook(kind, hook(self.node.hook_path, [self.node.hook_path, stage, "--state-dir",
                                                              str(self.node.state_dir)], timeout_s=10))
        if plan is not None:  # gpucr's runc wrapper turns this container's `runc create` into `runc restore`
            # only added (it may be there already): a removal of the same key in one adjustment is applied in
            # random order against the addition by containerd (measured: the annotation was lost in 1 of 4 runs)
            adj.add_annotation(nri_restore.RESTORE_ANNOTATION, str(decision.policy.restore_from))
            # the proof for the wrapper that this answer reached containerd (the id is unknown before creation, so a
            # user's annotation passed through by the runtime's container_annotations cannot carry it)
            adj.add_annotation(nri_restore.TICKET_ANNOTATION, ctr.id)
            log.info("%s will be restored from checkpoint %r (GPU map %s; volumes moved: %s)", view.describe(),
                     decision.policy.restore_from, dict(gpu_map) or "identity",
                     ", ".join(f"{d}: {a} -> {b}" for d, a, b in plan.volumes) or "none")
        log.info("%s managed (%s): CRIU config %s, record %s, OCI hooks %s", view.describe(), decision.reason,
                 conf or "none (criu_config_dir unusable)", "written" if paths.records else "none (state_dir unusable)",
                 "added" if paths.hooks else "none")
        return adj

    async def remove_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self._forget(ctr.id)
        nri_restore.finish(self.node, ctr.id)

    # -- helpers ------------------------------------------------------------------------------------------------
    def _write_criu_config(self, view: ContainerView, decision: Decision, paths: NodePaths) -> Path:
        base_path = view.annotations.get(CRIU_CONFIG_ANNOTATION) or (
            str(self.node.runc_criu_config) if paths.runc_criu_config else "")
        user: list[Any] = []
        try:
            user = parse_config(Path(base_path).read_text()) if base_path else []
        except FileNotFoundError:
            if view.annotations.get(CRIU_CONFIG_ANNOTATION):
                log.warning("%s: its %s file %s does not exist; using gpucr's options only", view.describe(),
                            CRIU_CONFIG_ANNOTATION, base_path)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path (bench/fuzz.py found it)
            log.warning("%s: cannot read CRIU config %s (%s); using gpucr's options only", view.describe(),
                        base_path, exc)
        merged = merge_config(user, decision.criu_options)
        text = render_config(merged, f"gpucr: CRIU options for managed containers\n"
                                     f"merged with: {base_path if user else '(nothing)'}")
        # Content-addressed and never removed with the container: runc reads this file again when a checkpoint of
        # the container is restored (the path travels in the checkpoint's spec), possibly long after it stopped.
        # Containers with the same policy share one file, so the directory stays small.
        d = self.node.criu_config_dir
        d.mkdir(parents=True, exist_ok=True, mode=0o700)  # its parents checked by check_node_paths
        path = d / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.conf"
        if not path.exists():
            tmp = d / f".{path.name}.{os.getpid()}.tmp"
            tmp.write_text(text)
            tmp.chmod(0o600)
            tmp.replace(path)
        return path

    def _forget(self, container_id: str) -> None:
        try:
            remove_record(self.node.state_dir, container_id)
        except RecordError:
            pass
