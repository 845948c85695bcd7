"""Helpers for integration tests against real containerd: a Stub running in a thread, and a recording plugin."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from nri_plugin.nri import Adjustment, Stub, pb
from tests.testenv import Containerd, wait_for

T = TypeVar("T")


class Recorder:
    """Records every event (thread-safe); create_container's behaviour is set per container name by the test."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.adjust: dict[str, Adjustment] = {}
        self.fail: dict[str, str] = {}
        self.slow: dict[str, float] = {}

    def _add(self, what: str, **kw: Any) -> None:
        with self.lock:
            self.seen.append((what, kw))

    def events(self, what: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [kw for w, kw in self.seen if what is None or w == what]

    def names(self, container_id: str) -> list[str]:
        with self.lock:
            return [w for w, kw in self.seen if kw.get("container") == container_id]

    async def configure(self, config: str, runtime_name: str, runtime_version: str) -> None:
        self._add("configure", config=config, runtime_name=runtime_name, runtime_version=runtime_version)

    async def synchronize(self, pods: list[pb.PodSandbox], containers: list[pb.Container]) -> None:
        self._add("synchronize", pods=[p.id for p in pods], containers=[c.id for c in containers])

    async def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> Adjustment | None:
        self._add("create_container", pod=pod.id, container=ctr.id, name=ctr.name,
                  pod_annotations=dict(pod.annotations))
        if ctr.name in self.fail:
            raise RuntimeError(self.fail[ctr.name])
        if ctr.name in self.slow:
            await asyncio.sleep(self.slow[ctr.name])
        return self.adjust.get(ctr.name)

    async def start_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self._add("start_container", pod=pod.id, container=ctr.id)

    async def stop_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self._add("stop_container", pod=pod.id, container=ctr.id)

    async def remove_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None:
        self._add("remove_container", pod=pod.id, container=ctr.id)

    async def run_pod_sandbox(self, pod: pb.PodSandbox) -> None:
        self._add("run_pod_sandbox", pod=pod.id)


class PluginThread:
    """Run a :class:`Stub` on its own event loop in a daemon thread (the tests themselves are synchronous)."""

    def __init__(self, plugin: object, socket_path: str, name: str = "itest", idx: str = "50", **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.stub = Stub(plugin, name=name, idx=idx, socket_path=socket_path, **kw)
        self.thread = threading.Thread(target=self._main, name=f"nri-{idx}-{name}", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(self.stub.run())
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self, timeout_s: float = 15) -> PluginThread:
        self.thread.start()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 15) -> None:
        async def ready() -> None:
            await self.stub.registered.wait()
            await self.stub.configured.wait()

        self.call(ready(), timeout_s)

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 15) -> T:
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout_s), self.loop).result(timeout_s + 5)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stub.stop)
            self.thread.join(15)
        assert not self.thread.is_alive(), "plugin thread did not stop"
        self.loop.close()
        if self.error is not None:
            raise AssertionError(f"plugin thread failed: {self.error!r}") from self.error


def bundle_config(containerd: Containerd, container_id: str) -> dict[str, Any]:
    """The OCI spec containerd wrote for the container (adjustments land here)."""
    path = Path(containerd.info["state_dir"]) / "io.containerd.runtime.v2.task" / "k8s.io" / container_id / "config.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def wait_events(rec: Recorder, pred: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    return wait_for(pred, timeout=timeout, what=what)


def now() -> float:
    return time.monotonic()
