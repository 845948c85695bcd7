"""A fake NRI runtime built on gpucr's own mux and ttrpc codec: it plays containerd's side of one plugin connection.

Roles are containerd's (NRI ``pkg/adaptation/plugin.go``): conn 1 is our ttrpc *client* calling the plugin's
``Plugin`` service, conn 2 our ttrpc *server* for ``Runtime`` (RegisterPlugin, UpdateContainers). As in containerd,
registration is signalled before the RegisterPlugin reply goes out, Configure and Synchronize follow, every call has
a deadline (2 s by default), and a missed deadline closes the plugin. ``configure_before_reply`` forces the race
containerd only shows now and then: the RegisterPlugin reply is held until Configure has been answered.
Used by unit tests and by bench/nri_latency.py; it is a test double, not a runtime.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.message import Message

from nri_plugin.mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from nri_plugin.nri.api import PLUGIN_SERVICE, RUNTIME_SERVICE, pb
from nri_plugin.ttrpc import Channel, Client, Code, RequestContext, Server, TTRPCError

M = TypeVar("M", bound=Message)


@dataclass
class FakeRuntime:
    runtime_name: str = "fake-runtime"
    runtime_version: str = "0.0.0-test"
    request_timeout_ms: int = 2000
    config: str = ""
    answer_register: bool = True
    configure_before_reply: bool = False
    #: never answer UpdateContainers (containerd does this after a mux frame it cannot read)
    hang_updates: bool = False
    #: state for Synchronize, and how many objects per chunk (0: one message, no ``more``)
    pods: list[pb.PodSandbox] = field(default_factory=list)
    containers: list[pb.Container] = field(default_factory=list)
    sync_chunk: int = 0
    # what happened
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    synchronized: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    plugin_name: str = ""
    plugin_idx: str = ""
    events: int = -1
    sync_replies: list[pb.SynchronizeResponse] = field(default_factory=list)
    update_requests: list[pb.UpdateContainersRequest] = field(default_factory=list)
    close_reason: str = ""

    def __post_init__(self) -> None:
        self._client: Client | None = None
        self._mux: Mux | None = None
        self._serve: asyncio.Task[None] | None = None
        self._setup: asyncio.Task[None] | None = None

    async def attach(self, sock: socket.socket) -> None:
        """Take the runtime's end of a connected socket and start serving it."""
        mux = await Mux.from_socket(sock)
        self._mux = mux
        server = Server(Channel(mux.open(RUNTIME_SERVICE_CONN)), {
            (RUNTIME_SERVICE, "RegisterPlugin"): self._register,
            (RUNTIME_SERVICE, "UpdateContainers"): self._update_containers,
        })
        self._client = Client(Channel(mux.open(PLUGIN_SERVICE_CONN)))
        mux.start()
        self._client.start()
        self._serve = asyncio.get_running_loop().create_task(self._serve_until_closed(server))

    async def _serve_until_closed(self, server: Server) -> None:
        try:
            await server.serve()
        except Exception as exc:  # test double: record why the connection ended
            self.close_reason = str(exc)
        finally:
            self.closed.set()

    async def _register(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = pb.RegisterPluginRequest()
        req.ParseFromString(payload)
        self.plugin_name, self.plugin_idx = req.plugin_name, req.plugin_idx
        if not self.answer_register:
            await asyncio.Event().wait()  # never answer
        self.registered.set()
        self._setup = asyncio.get_running_loop().create_task(self._configure_and_sync())
        if self.configure_before_reply:
            await asyncio.shield(self._setup)
        return b""

    async def _configure_and_sync(self) -> None:
        try:
            resp = await self.call("Configure", pb.ConfigureRequest(
                config=self.config, runtime_name=self.runtime_name, runtime_version=self.runtime_version,
                registration_timeout=5000, request_timeout=self.request_timeout_ms), pb.ConfigureResponse)
            self.events = resp.events
            n = self.sync_chunk or max(1, len(self.pods) + len(self.containers))
            objs: list[Any] = [*self.pods, *self.containers]
            chunks = [objs[i:i + n] for i in range(0, len(objs), n)] or [[]]
            for i, chunk in enumerate(chunks):
                more = bool(self.sync_chunk) and i < len(chunks) - 1
                req = pb.SynchronizeRequest(pods=[o for o in chunk if isinstance(o, pb.PodSandbox)],
                                            containers=[o for o in chunk if isinstance(o, pb.Container)], more=more)
                self.sync_replies.append(await self.call("Synchronize", req, pb.SynchronizeResponse))
            self.synchronized.set()
        except TTRPCError as exc:
            self.close_reason = f"setup failed: {exc}"
            self.close()

    async def _update_containers(self, payload: bytes, ctx: RequestContext) -> bytes:
        req = pb.UpdateContainersRequest()
        req.ParseFromString(payload)
        self.update_requests.append(req)
        if self.hang_updates:
            await asyncio.Event().wait()
        failed = [u for u in req.update if u.container_id.startswith("missing")]
        return pb.UpdateContainersResponse(failed=failed).SerializeToString()

    async def call(self, method: str, req: Message, resp_type: type[M], timeout_s: float | None = None) -> M:
        """Call the plugin like containerd: a deadline on every call, the plugin dropped when it is missed."""
        assert self._client is not None, "not attached"
        try:
            out = await self._client.call(PLUGIN_SERVICE, method, req.SerializeToString(),
                                          timeout_s=timeout_s or self.request_timeout_ms / 1000)
        except TTRPCError as exc:
            if exc.code == Code.DEADLINE_EXCEEDED and "not answered" in exc.status_message:
                self.close_reason = f"{method}: deadline missed, plugin dropped"
                self.close()
            raise
        resp = resp_type()
        resp.ParseFromString(out)
        return resp

    async def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> pb.CreateContainerResponse:
        return await self.call("CreateContainer", pb.CreateContainerRequest(pod=pod, container=ctr),
                               pb.CreateContainerResponse)

    async def state_change(self, event: int, pod: pb.PodSandbox, ctr: pb.Container | None = None) -> None:
        ev = pb.StateChangeEvent(event=event, pod=pod)  # type: ignore[arg-type]
        if ctr is not None:
            ev.container.CopyFrom(ctr)
        await self.call("StateChange", ev, pb.Empty)

    def close(self) -> None:
        if self._mux is not None:
            self._mux.close()

    async def aclose(self) -> None:
        self.close()
        for t in (self._serve, self._setup):
            if t is not None:
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
        if self._client is not None:
            await self._client.close()


def pod(i: int = 0, **annotations: str) -> pb.PodSandbox:
    return pb.PodSandbox(id=f"pod{i}", name=f"pod-{i}", uid=f"uid-{i}", namespace="default",
                         annotations=annotations)


def container(i: int = 0, pod_id: str = "pod0") -> pb.Container:
    return pb.Container(id=f"ctr{i}", pod_sandbox_id=pod_id, name=f"c{i}", state=pb.CONTAINER_CREATED,
                        args=["/bin/sh"], env=["PATH=/bin"])
