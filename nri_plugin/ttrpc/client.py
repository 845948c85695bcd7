"""An asyncio ttrpc client: unary calls with deadlines over one :class:`~.channel.Channel`.

Stream ids start at 1 and go up by 2 (ttrpc ``client.go``). Responses are matched by stream id, so they may come in
any order. A call's timeout is both sent to the server (``timeout_nano``) and enforced locally: the runtime can go
quiet without closing the connection (containerd does, after a mux frame it cannot read), so no call may wait
forever. Streaming RPCs are not supported (NRI uses none).
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.message import DecodeError

from ._frame import Frame, MessageType, OversizedFrame
from ._pb import ttrpc_pb2 as pb
from .channel import Channel
from .errors import Code, ConnectionClosedError, FrameError, TTRPCError

__all__ = ["Client"]

log = logging.getLogger(__name__)


class Client:
    """Call methods on the peer's ttrpc server. Use :meth:`start` (or ``async with``) before calling.

    Args:
        channel: the channel to use; the client owns it and closes it in :meth:`close`.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._next_id = 1
        self._waiters: dict[int, asyncio.Future[pb.Response]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed: TTRPCError | None = None

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="ttrpc-client-reader")

    async def call(self, service: str, method: str, payload: bytes, timeout_s: float | None = None) -> bytes:
        """One unary call; returns the response payload.

        Raises:
            TTRPCError: the server's non-OK status, or DEADLINE_EXCEEDED when ``timeout_s`` passed first.
            ConnectionClosedError: the connection closed before the answer.
            OversizedMessageError: the request is over 4 MiB (nothing sent).
        """
        if self._closed is not None:
            raise self._closed
        self.start()
        stream_id = self._next_id
        self._next_id += 2
        req = pb.Request(service=service, method=method, payload=payload,
                         timeout_nano=int(timeout_s * 1e9) if timeout_s else 0)
        fut: asyncio.Future[pb.Response] = asyncio.get_running_loop().create_future()
        self._waiters[stream_id] = fut
        try:
            await self._channel.send(stream_id, MessageType.REQUEST, req.SerializeToString())
            try:
                resp = await asyncio.wait_for(fut, timeout_s)
            except TimeoutError:
                raise TTRPCError(Code.DEADLINE_EXCEEDED,
                                 f"{service}/{method} not answered within {timeout_s:.3g} s") from None
        finally:
            self._waiters.pop(stream_id, None)
        if resp.HasField("status") and resp.status.code != Code.OK:
            raise TTRPCError(resp.status.code, resp.status.message)
        return resp.payload

    async def _read_loop(self) -> None:
        reason: TTRPCError
        try:
            while True:
                frame = await self._channel.recv()
                if frame is None:
                    reason = ConnectionClosedError("ttrpc connection closed by the server")
                    break
                self._dispatch(frame)
        except (ConnectionClosedError, TTRPCError) as exc:
            reason = exc
        except FrameError as exc:
            reason = ConnectionClosedError(f"ttrpc server sent garbage: {exc}")
        self._fail_all(reason)

    def _dispatch(self, frame: Frame | OversizedFrame) -> None:
        fut = self._waiters.get(frame.stream_id)
        if isinstance(frame, OversizedFrame):
            if fut is not None and not fut.done():
                fut.set_exception(TTRPCError(Code.RESOURCE_EXHAUSTED,
                                             f"response of {frame.length} bytes is over the 4 MiB limit"))
            return
        if frame.type != MessageType.RESPONSE:
            log.debug("ttrpc client: ignoring message type %d on stream %d", frame.type, frame.stream_id)
            return
        if fut is None or fut.done():
            log.debug("ttrpc client: dropping response for unknown stream %d", frame.stream_id)
            return
        resp = pb.Response()
        try:
            resp.ParseFromString(frame.payload)
        except DecodeError as exc:  # the server's fault: fail just this call
            fut.set_exception(TTRPCError(Code.INTERNAL, f"undecodable ttrpc response: {exc}"))
            return
        fut.set_result(resp)

    def _fail_all(self, reason: TTRPCError) -> None:
        self._closed = reason
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(reason)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        """Close the channel and fail pending calls (idempotent)."""
        self._channel.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            self._reader = None
        self._fail_all(self._closed or ConnectionClosedError("ttrpc client closed"))
