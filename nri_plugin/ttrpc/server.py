"""An asyncio ttrpc server: service/method dispatch over one :class:`~.channel.Channel`.

Follows ttrpc ``server.go``/``services.go``: handlers are looked up by (fully-qualified service, bare method); an
unknown one gets UNIMPLEMENTED; a handler exception becomes an error status (its :class:`TTRPCError` code, else
UNKNOWN) and never closes the connection; every request runs in its own task, so responses go out in completion
order. Stream ids must be odd and increasing (INVALID_ARGUMENT otherwise); a request over 4 MiB gets
RESOURCE_EXHAUSTED; unknown message types are ignored. :meth:`serve` returns at EOF and raises on garbage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from ._frame import MessageType, OversizedFrame
from ._pb import ttrpc_pb2 as pb
from .channel import Channel
from .errors import Code, ConnectionClosedError, OversizedMessageError, TTRPCError

__all__ = ["Handler", "RequestContext", "Server"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What a handler may want to know about its request besides the payload."""

    service: str
    method: str
    stream_id: int
    #: the caller's remaining deadline when it sent the request (``timeout_nano``), None when it set none
    timeout_s: float | None
    metadata: tuple[tuple[str, str], ...] = ()


#: ``async def handler(payload, ctx) -> response payload``
Handler = Callable[[bytes, RequestContext], Awaitable[bytes]]


class Server:
    """Serve ``handlers`` (keyed by ``(service, method)``) on one channel until EOF."""

    def __init__(self, channel: Channel, handlers: Mapping[tuple[str, str], Handler]) -> None:
        self._channel = channel
        self._handlers = dict(handlers)
        self._last_id = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        """Read and dispatch requests until the peer closes.

        Returns at EOF. Raises FrameError on garbage and ConnectionClosedError on transport failure; in-flight
        handlers are cancelled in every case.
        """
        try:
            while True:
                frame = await self._channel.recv()
                if frame is None:
                    return
                if isinstance(frame, OversizedFrame):
                    if frame.type == MessageType.REQUEST:
                        self._reply_status(frame.stream_id, Code.RESOURCE_EXHAUSTED,
                                           f"request of {frame.length} bytes is over the 4 MiB limit")
                    continue
                if frame.type != MessageType.REQUEST:
                    log.debug("ttrpc server: ignoring message type %d on stream %d", frame.type, frame.stream_id)
                    continue
                self._accept(frame.stream_id, frame.payload)
        finally:
            for t in list(self._tasks):
                t.cancel()

    def _accept(self, stream_id: int, payload: bytes) -> None:
        if stream_id % 2 == 0:
            self._reply_status(stream_id, Code.INVALID_ARGUMENT, f"stream id {stream_id} must be odd")
            return
        if stream_id <= self._last_id:
            self._reply_status(stream_id, Code.INVALID_ARGUMENT,
                               f"stream id {stream_id} cannot be re-used and must increment")
            return
        self._last_id = stream_id
        req = pb.Request()
        try:
            req.ParseFromString(payload)
        except DecodeError as exc:
            self._reply_status(stream_id, Code.INVALID_ARGUMENT, f"undecodable ttrpc request: {exc}")
            return
        handler = self._handlers.get((req.service, req.method))
        if handler is None:
            self._reply_status(stream_id, Code.UNIMPLEMENTED, f"{req.service}/{req.method} is not implemented")
            return
        ctx = RequestContext(req.service, req.method, stream_id, req.timeout_nano / 1e9 if req.timeout_nano else None,
                             tuple((kv.key, kv.value) for kv in req.metadata))
        self._spawn(self._run(handler, req.payload, ctx))

    async def _run(self, handler: Handler, payload: bytes, ctx: RequestContext) -> None:
        try:
            out = await handler(payload, ctx)
            resp = pb.Response(payload=out)
        except TTRPCError as exc:
            resp = pb.Response(status=pb.Status(code=exc.code, message=exc.status_message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # task root: a handler bug becomes the caller's error status, the server lives on
            log.exception("ttrpc handler %s/%s failed", ctx.service, ctx.method)
            resp = pb.Response(status=pb.Status(code=Code.UNKNOWN, message=str(exc) or type(exc).__name__))
        await self._send(ctx.stream_id, resp)

    def _reply_status(self, stream_id: int, code: int, message: str) -> None:
        log.warning("ttrpc server: stream %d: %s", stream_id, message)
        self._spawn(self._send(stream_id, pb.Response(status=pb.Status(code=code, message=message))))

    async def _send(self, stream_id: int, resp: pb.Response) -> None:
        data = resp.SerializeToString()
        try:
            await self._channel.send(stream_id, MessageType.RESPONSE, data)
        except OversizedMessageError as exc:
            log.error("ttrpc server: response on stream %d dropped: %s", stream_id, exc)
            await self._send(stream_id, pb.Response(status=pb.Status(code=Code.RESOURCE_EXHAUSTED, message=str(exc))))
        except ConnectionClosedError as exc:
            log.debug("ttrpc server: response on stream %d not sent: %s", stream_id, exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        self._channel.close()
