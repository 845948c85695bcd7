"""A ttrpc channel: frames over any ordered byte stream (a unix socket, or one connection of NRI's mux).

The channel owns a :class:`~._frame.FrameDecoder` and writes each frame with a single ``write`` call, so a stream
that needs message boundaries (the mux writes every ttrpc message as at most two mux frames) gets them. Transport
errors are translated here into :class:`ConnectionClosedError`; codec errors pass through as :class:`FrameError`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from ._frame import Frame, FrameDecoder, OversizedFrame, encode_frame
from .errors import ConnectionClosedError

__all__ = ["ByteStream", "Channel", "SocketStream"]

READ_CHUNK_BYTES = 64 << 10


class ByteStream(Protocol):
    """What a channel runs on. ``write`` gets one whole ttrpc message per call."""

    async def read(self) -> bytes:
        """Some bytes, or ``b""`` at EOF."""
        ...

    async def write(self, data: bytes) -> None: ...

    def close(self) -> None:
        """Idempotent."""
        ...


class SocketStream:
    """:class:`ByteStream` over an asyncio stream pair (plain ttrpc on a socket, no mux)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        try:
            return await self._reader.read(READ_CHUNK_BYTES)
        except (ConnectionError, OSError) as exc:
            raise ConnectionClosedError(f"ttrpc socket read failed: {exc}") from exc

    async def write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise ConnectionClosedError(f"ttrpc socket write failed: {exc}") from exc

    def close(self) -> None:
        self._writer.close()


class Channel:
    """Frame-level I/O over a :class:`ByteStream`; one reader at a time, concurrent writers allowed."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._pending: deque[Frame | OversizedFrame] = deque()

    async def recv(self) -> Frame | OversizedFrame | None:
        """The next frame, or None at a clean EOF (between frames).

        Raises:
            FrameError: garbage on the stream.
            ConnectionClosedError: transport failure, or EOF in the middle of a frame.
        """
        while not self._pending:
            data = await self.stream.read()
            if not data:
                if self._decoder.buffered:
                    raise ConnectionClosedError(
                        f"ttrpc stream closed in the middle of a frame ({self._decoder.buffered} bytes buffered)")
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.popleft()

    async def send(self, stream_id: int, msg_type: int, payload: bytes, flags: int = 0) -> None:
        """Encode and write one frame (raises OversizedMessageError before writing anything if too large)."""
        await self.stream.write(encode_frame(stream_id, msg_type, payload, flags))

    def close(self) -> None:
        self.stream.close()
