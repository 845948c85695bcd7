"""The NRI plugin stub: connect, register, serve the runtime's calls, call UpdateContainers.

Shaped like containerd/nri ``pkg/stub``: a plugin is an object with ``async`` handler methods (see
:mod:`.plugin`); the stub owns the connection. Over one unix socket it runs the mux, a ttrpc *server* on conn 1
(the runtime calls ``nri.pkg.api.v1alpha1.Plugin``) and a ttrpc *client* on conn 2 (we call ``Runtime``).

Two modes:
  * external: dial ``socket_path`` (default ``/var/run/nri/nri.sock``); on EOF or any connection error, reconnect
    with exponential backoff (never a tight loop);
  * pre-registered: the runtime started us with a connected socket on fd ``NRI_PLUGIN_SOCKET``; on EOF, return.

Protocol facts it relies on (NRI fact sheet): Configure can arrive before the RegisterPlugin reply, so conn 1 is
served while registering; every runtime call carries a deadline (2 s), and a missed deadline makes the runtime drop
the plugin *and* lose the plugin's changes silently, so a handler still running at :attr:`handler_budget` of that
deadline is cancelled and answered with an error status instead (the runtime fails that one request and keeps the
plugin); chunked Synchronize (``more``) is collected and each non-final chunk is echoed with ``more=true``; the
runtime holds its NRI lock while waiting for a handler, so :meth:`Stub.update_containers` refuses to run inside one
(use :meth:`Stub.defer_update_containers`); conn 2 can go silent without closing, so every call there has its own
timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from google.protobuf.message import DecodeError, Message

from ..mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux
from ..ttrpc import Channel, Client, Code, RequestContext, Server, TTRPCError
from ..ttrpc.errors import ConnectionClosedError, FrameError
from .api import PLUGIN_SERVICE, RUNTIME_SERVICE, VALID_EVENTS_V03, VALID_EVENTS_V010, EventMask, mask_names, pb
from .errors import PluginError, RegistrationError
from .plugin import EVENT_HANDLERS, dispatch_state_change, handler_for, implemented_events

__all__ = ["DEFAULT_SOCKET_PATH", "Stub", "describe_events", "parse_plugin_name"]

DEFAULT_SOCKET_PATH = "/var/run/nri/nri.sock"
REGISTRATION_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 2.0
#: answer a slow handler at this fraction of the runtime's deadline (time left for the error to travel back)
HANDLER_BUDGET = 0.75
UPDATE_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0
#: a session that stayed registered this long resets the reconnect backoff
HEALTHY_SESSION_S = 10.0

log = logging.getLogger(__name__)

_in_handler: contextvars.ContextVar[str | None] = contextvars.ContextVar("nri_in_handler", default=None)


def parse_plugin_name(argv0: str) -> tuple[str, str] | None:
    """``(idx, name)`` from an executable name ``NN-name`` (as the runtime names pre-registered plugins)."""
    base = argv0.rsplit("/", 1)[-1]
    if len(base) > 3 and base[:2].isdigit() and base[:2].isascii() and base[2] == "-":
        return base[:2], base[3:]
    return None


class _PluginLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['plugin']}: {msg}", kwargs  # type: ignore[index]


class Stub:
    """Run ``plugin`` against an NRI runtime.

    Args:
        plugin: any object with at least one ``async`` event handler (:mod:`.plugin` lists them).
        name: plugin name (the runtime's ``NRI_PLUGIN_NAME`` for pre-registered plugins).
        idx: two-digit index ("00"-"99"): plugins are called in idx order.
        socket_path: the runtime's NRI socket, dialled in external mode.
        connection: an already-connected socket (pre-registered mode; the stub owns and closes it). Test seam too.
        dialer: ``async () -> socket`` replacing the dial of ``socket_path`` (test seam).
        registration_timeout_s: how long to wait for the RegisterPlugin reply.
        update_timeout_s: default timeout of calls on conn 2 (UpdateContainers).
        handler_budget: fraction of the runtime's deadline after which a handler is answered with an error.

    Raises:
        PluginError: the plugin handles no event, a handler is not ``async``, or the name/idx is invalid.
    """

    def __init__(self, plugin: object, *, name: str, idx: str, socket_path: str = DEFAULT_SOCKET_PATH,
                 connection: socket.socket | None = None,
                 dialer: Callable[[], Awaitable[socket.socket]] | None = None,
                 registration_timeout_s: float = REGISTRATION_TIMEOUT_S, update_timeout_s: float = UPDATE_TIMEOUT_S,
                 handler_budget: float = HANDLER_BUDGET) -> None:
        if not name:
            raise PluginError("plugin name is empty (set --name, NRI_PLUGIN_NAME, or name the executable NN-name)")
        if len(idx) != 2 or not idx.isdigit() or not idx.isascii():
            raise PluginError(f"plugin index {idx!r} must be exactly two digits, 00-99")
        self.plugin = plugin
        self.name = name
        self.idx = idx
        self.full_name = f"{idx}-{name}"
        self.socket_path = socket_path
        self.pre_registered = connection is not None
        self._connection = connection
        self._dialer = dialer
        self.registration_timeout_s = registration_timeout_s
        self.update_timeout_s = update_timeout_s
        self.handler_budget = handler_budget
        self.implemented = implemented_events(plugin)
        if not self.implemented:
            names = ", ".join(r.name for r in EVENT_HANDLERS.values())
            raise PluginError(f"{type(plugin).__name__} handles no NRI event: define at least one of {names}")
        for extra in ("configure", "synchronize", "shutdown"):
            handler_for(plugin, extra)  # raises if not async
        self.log = _PluginLog(log, {"plugin": self.full_name})
        # state of the current connection
        self.runtime_name = ""
        self.runtime_version = ""
        self.runtime_nri_version = ""
        self.request_timeout_s = REQUEST_TIMEOUT_S
        self.runtime_registration_timeout_s = REGISTRATION_TIMEOUT_S
        self.events = EventMask(0)
        self.registered = asyncio.Event()
        self.configured = asyncio.Event()
        self.sessions = 0
        self._client: Client | None = None
        self._mux: Mux | None = None
        self._sync_pods: list[pb.PodSandbox] = []
        self._sync_containers: list[pb.Container] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    # -- running --------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until stopped. External mode reconnects after every lost connection (with backoff);
        pre-registered mode returns when the runtime closes the connection.

        Raises:
            RegistrationError: pre-registered mode only, when registration failed.
        """
        if self.pre_registered:
            sock, self._connection = self._connection, None
            assert sock is not None
            await self._session(sock)
            return
        backoff = BACKOFF_INITIAL_S
        while not self._stopping:
            started = time.monotonic()
            try:
                sock = await self._dial()
                await self._session(sock)
                if not self._stopping:
                    self.log.warning("runtime closed the connection on %s", self.socket_path)
            except RegistrationError as exc:
                self.log.error("%s", exc)
            except (OSError, ConnectionClosedError, FrameError, PluginError) as exc:
                self.log.error("connection to the runtime on %s failed: %s", self.socket_path, exc)
            if self._stopping:
                break
            if self.registered.is_set() and time.monotonic() - started >= HEALTHY_SESSION_S:
                backoff = BACKOFF_INITIAL_S
            self.log.info("reconnecting in %.1f s", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def stop(self) -> None:
        """Close the connection and make :meth:`run` return (idempotent)."""
        self._stopping = True
        if self._mux is not None:
            self._mux.close()

    async def _dial(self) -> socket.socket:
        if self._dialer is not None:
            return await self._dialer()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    async def _session(self, sock: socket.socket) -> None:
        """One connection: register, then serve conn 1 until EOF. Raises on registration failure or garbage."""
        self.registered.clear()
        self.configured.clear()
        self._sync_pods, self._sync_containers = [], []
        self.sessions += 1
        mux = await Mux.from_socket(sock)
        self._mux = mux
        server = Server(Channel(mux.open(PLUGIN_SERVICE_CONN)), self._handlers())
        client = Client(Channel(mux.open(RUNTIME_SERVICE_CONN)))
        self._client = client
        mux.start()
        client.start()
        serving = asyncio.get_running_loop().create_task(server.serve(), name=f"nri-serve-{self.full_name}")
        try:
            self.log.info("connected (%s), registering", "pre-registered" if self.pre_registered else self.socket_path)
            req = pb.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx)
            try:
                await client.call(RUNTIME_SERVICE, "RegisterPlugin", req.SerializeToString(),
                                  timeout_s=self.registration_timeout_s)
            except TTRPCError as exc:
                if exc.code == Code.DEADLINE_EXCEEDED:
                    raise RegistrationError(
                        f"{self.full_name}: the runtime did not answer RegisterPlugin within "
                        f"{self.registration_timeout_s:g} s; is this an NRI socket?") from exc
                raise RegistrationError(f"{self.full_name}: RegisterPlugin failed: {exc}") from exc
            self.registered.set()
            self.log.info("registered")
            await serving
            if mux.error is not None:
                raise ConnectionClosedError(str(mux.error))
        finally:
            mux.close()
            if not serving.done():
                serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            await client.close()
            for t in list(self._tasks):
                t.cancel()
            self._client = None
            self._mux = None

    # -- calls to the runtime (conn 2) -------------------------------------------------------------------------------
    async def update_containers(self, updates: Iterable[pb.ContainerUpdate] = (),
                                evictions: Iterable[pb.ContainerEviction] = (), *,
                                timeout_s: float | None = None) -> list[pb.ContainerUpdate]:
        """Ask the runtime to update (or evict) containers; returns the updates that failed.

        Never call this from inside a handler (awaiting it there deadlocks containerd, which holds its NRI lock
        until the handler answers): use :meth:`defer_update_containers`, or call it after the handler returned.

        Raises:
            PluginError: called inside a handler, or not registered.
            TTRPCError: the runtime's error, or DEADLINE_EXCEEDED after ``timeout_s`` (default
                :attr:`update_timeout_s`).
        """
        inside = _in_handler.get()
        if inside is not None:
            raise PluginError(
                f"{self.full_name}: update_containers() called inside the {inside} handler; the runtime holds its NRI "
                "lock until the handler returns, so this would deadlock; use defer_update_containers()")
        client = self._client
        if client is None or not self.registered.is_set():
            raise PluginError(f"{self.full_name}: update_containers() needs a registered connection")
        req = pb.UpdateContainersRequest(update=list(updates), evict=list(evictions))
        out = await client.call(RUNTIME_SERVICE, "UpdateContainers", req.SerializeToString(),
                                timeout_s=timeout_s or self.update_timeout_s)
        resp = pb.UpdateContainersResponse()
        resp.ParseFromString(out)
        return list(resp.failed)

    def defer_update_containers(self, updates: Iterable[pb.ContainerUpdate] = (),
                                evictions: Iterable[pb.ContainerEviction] = (), *,
                                timeout_s: float | None = None) -> asyncio.Task[list[pb.ContainerUpdate]]:
        """Start :meth:`update_containers` in its own task (safe inside a handler: it is not awaited there)."""
        ups, evs = list(updates), list(evictions)
        task = asyncio.get_running_loop().create_task(
            self.update_containers(ups, evs, timeout_s=timeout_s), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- serving the runtime (conn 1) ------------------------------------------------------------------------------
    def _handlers(self) -> dict[tuple[str, str], Callable[[bytes, RequestContext], Awaitable[bytes]]]:
        table: dict[str, Callable[[bytes, RequestContext], Awaitable[bytes]]] = {
            "Configure": self._wrap("configure", pb.ConfigureRequest, self._configure),
            "Synchronize": self._wrap("synchronize", pb.SynchronizeRequest, self._synchronize),
            "Shutdown": self._wrap("shutdown", pb.Empty, self._shutdown),
            "StateChange": self._wrap("state_change", pb.StateChangeEvent, self._state_change),
        }
        for row in EVENT_HANDLERS.values():
            h = handler_for(self.plugin, row.name)
            if h is not None:
                table[row.rpc] = self._wrap(row.name, row.request,
                                            lambda req, h=h, row=row: row.call(h, req))  # type: ignore[misc]
        return {(PLUGIN_SERVICE, m): f for m, f in table.items()}

    def _wrap(self, what: str, req_type: type[Message], fn: Callable[[Any], Awaitable[Message]]
              ) -> Callable[[bytes, RequestContext], Awaitable[bytes]]:
        async def handle(payload: bytes, ctx: RequestContext) -> bytes:
            req = req_type()
            try:
                req.ParseFromString(payload)
            except DecodeError as exc:
                raise TTRPCError(Code.INVALID_ARGUMENT, f"plugin {self.full_name}: undecodable {what} request: "
                                                        f"{exc}") from exc
            deadline = self.request_timeout_s if ctx.timeout_s is None else min(ctx.timeout_s, self.request_timeout_s)
            if what == "configure" and ctx.timeout_s is not None:
                deadline = ctx.timeout_s
            budget = deadline * self.handler_budget
            token = _in_handler.set(what)
            t0 = time.perf_counter()
            try:
                resp = await asyncio.wait_for(fn(req), budget)
            except TimeoutError:
                self.log.error("%s handler did not finish within %.2f s (%.0f%% of the runtime's %.2f s deadline): "
                               "answered with an error so the runtime keeps this plugin", what, budget,
                               self.handler_budget * 100, deadline)
                raise TTRPCError(Code.DEADLINE_EXCEEDED,
                                 f"plugin {self.full_name}: {what} handler did not finish within {budget:.2f} s") \
                    from None
            except TTRPCError:
                raise
            except Exception as exc:  # task root for the plugin's code: its error becomes the runtime's error status
                self.log.error("%s handler failed: %s", what, exc, exc_info=not isinstance(exc, PluginError))
                raise TTRPCError(Code.UNKNOWN, f"plugin {self.full_name}: {what} failed: {exc}") from exc
            finally:
                _in_handler.reset(token)
            self.log.debug("%s handled in %.3f ms", what, (time.perf_counter() - t0) * 1e3)
            return resp.SerializeToString()

        return handle

    async def _configure(self, req: pb.ConfigureRequest) -> Message:
        self.runtime_name = req.runtime_name
        self.runtime_version = req.runtime_version
        self.runtime_nri_version = req.NRI_version
        if req.request_timeout:
            self.request_timeout_s = req.request_timeout / 1000
        if req.registration_timeout:
            self.runtime_registration_timeout_s = req.registration_timeout / 1000
        # NRI v0.12+ announces itself; older runtimes (containerd <= 2.1) reject anything above 0x7FF
        valid = VALID_EVENTS_V010 if req.NRI_version else VALID_EVENTS_V03
        mask = EventMask(self.implemented & valid)
        h = handler_for(self.plugin, "configure")
        if h is not None:
            asked = await h(req.config, req.runtime_name, req.runtime_version)
            if asked:
                asked = EventMask(int(asked))
                if asked & ~self.implemented:
                    raise PluginError(f"configure asked for events without handlers: "
                                      f"{', '.join(mask_names(asked & ~self.implemented))}")
                mask = EventMask(asked & valid)
        if not mask:
            raise PluginError(f"no event this runtime can deliver is handled (handled: "
                              f"{', '.join(mask_names(self.implemented))})")
        self.events = mask
        self.configured.set()
        self.log.info("configured by %s %s (request timeout %.1f s); subscribed to %s", req.runtime_name,
                      req.runtime_version, self.request_timeout_s, ", ".join(mask_names(mask)))
        return pb.ConfigureResponse(events=int(mask))

    async def _synchronize(self, req: pb.SynchronizeRequest) -> Message:
        self._sync_pods.extend(req.pods)
        self._sync_containers.extend(req.containers)
        if req.more:
            return pb.SynchronizeResponse(more=True)
        pods, containers = self._sync_pods, self._sync_containers
        self._sync_pods, self._sync_containers = [], []
        h = handler_for(self.plugin, "synchronize")
        updates = (await h(pods, containers)) if h is not None else None
        # logged after the handler: "synchronized" means the plugin has taken in the runtime's state
        self.log.info("synchronized: %d pods, %d containers", len(pods), len(containers))
        return pb.SynchronizeResponse(update=list(updates or []))

    async def _shutdown(self, req: pb.Empty) -> Message:
        h = handler_for(self.plugin, "shutdown")
        if h is not None:
            await h()
        return pb.Empty()

    async def _state_change(self, req: pb.StateChangeEvent) -> Message:
        if not await dispatch_state_change(self.plugin, req):
            self.log.debug("StateChange event %d has no handler here", req.event)
        return pb.Empty()


def describe_events(plugin: object) -> list[str]:
    """Handler names the plugin subscribes to on containerd 1.7/2.1 (for ``gpucr plugin --events``)."""
    return mask_names(implemented_events(plugin) & VALID_EVENTS_V03)
