"""The NRI multiplexer over one asyncio stream: several logical byte streams (conns) on one unix socket.

``Mux.open(conn_id)`` returns a :class:`MuxConn` (a :class:`~nri_plugin.ttrpc.channel.ByteStream`), whose ``write``
sends one ttrpc message in the two-frame shape the Go reader accepts. One reader task feeds bounded per-conn queues;
the first error (EOF, transport failure, garbage, a frame for a conn nobody opened) closes every conn and sticks:
each later read returns EOF or raises :class:`MuxClosedError` with that reason. Opening is local, as in Go: there is
no handshake. Unlike Go, which drops frames for unopened conns silently, we treat them as garbage: NRI uses only
conns 1 and 2, and a loud error beats a silent hang.
"""

from __future__ import annotations

import asyncio
import logging

from ..ttrpc.errors import ConnectionClosedError
from ._frame import MuxDecoder, message_frames
from .errors import MuxClosedError, MuxFrameError

__all__ = ["PLUGIN_SERVICE_CONN", "RUNTIME_SERVICE_CONN", "Mux", "MuxConn"]

log = logging.getLogger(__name__)

#: conn on which the runtime calls the plugin (plugin = ttrpc server)
PLUGIN_SERVICE_CONN = 1
#: conn on which the plugin calls the runtime (plugin = ttrpc client)
RUNTIME_SERVICE_CONN = 2
READ_CHUNK_BYTES = 64 << 10
#: per-conn queue (Go uses 256 frames and closes the mux on overflow; we apply backpressure instead)
QUEUE_FRAMES = 256

_EOF = b""


class MuxConn:
    """One logical connection. ``read`` returns ``b""`` at a clean EOF of the trunk."""

    def __init__(self, mux: Mux, conn_id: int) -> None:
        self._mux = mux
        self.conn_id = conn_id
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_FRAMES)
        self._eof = False

    async def read(self) -> bytes:
        if self._eof:
            return self._mux._eof_or_raise()
        data = await self._queue.get()
        if data is _EOF:
            self._eof = True
            return self._mux._eof_or_raise()
        return data

    async def write(self, data: bytes) -> None:
        await self._mux._write(self.conn_id, data)

    def close(self) -> None:
        """Closing any conn closes the trunk (NRI conns live and die together)."""
        self._mux.close()


class Mux:
    """Own one connected stream pair; start the reader with :meth:`start` after opening the conns."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = MuxDecoder()
        self._conns: dict[int, MuxConn] = {}
        self._task: asyncio.Task[None] | None = None
        self._error: Exception | None = None
        self._closed = asyncio.Event()

    @classmethod
    async def from_socket(cls, sock: object) -> Mux:
        """Wrap a connected ``socket.socket`` (the mux takes ownership and closes it)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)  # type: ignore[arg-type]
        return cls(reader, writer)

    def open(self, conn_id: int) -> MuxConn:
        if conn_id in self._conns:
            raise ValueError(f"mux conn {conn_id} is already open")
        conn = MuxConn(self, conn_id)
        self._conns[conn_id] = conn
        return conn

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_loop(), name="nri-mux-reader")

    @property
    def error(self) -> Exception | None:
        """The first error that closed the mux (None while open, or after a clean EOF or local close)."""
        return self._error

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self._reader.read(READ_CHUNK_BYTES)
                except (ConnectionError, OSError) as exc:
                    raise MuxClosedError(f"NRI socket read failed: {exc}") from exc
                if not data:
                    if self._decoder.buffered:
                        raise MuxClosedError(f"NRI socket closed in the middle of a mux frame "
                                             f"({self._decoder.buffered} bytes buffered)")
                    break
                for conn_id, payload in self._decoder.feed(data):
                    conn = self._conns.get(conn_id)
                    if conn is None:
                        raise MuxFrameError(f"NRI mux frame for conn {conn_id}, which is not open "
                                            f"(open: {sorted(self._conns)})")
                    if payload:
                        await conn._queue.put(payload)
        except (MuxClosedError, MuxFrameError) as exc:
            self._set_error(exc)
        finally:
            self._shutdown()

    def _set_error(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc

    def _eof_or_raise(self) -> bytes:
        if self._error is not None:
            raise ConnectionClosedError(str(self._error)) from self._error
        return b""

    async def _write(self, conn_id: int, message: bytes) -> None:
        if self._closed.is_set():
            raise ConnectionClosedError(f"NRI mux is closed: {self._error or 'connection closed'}")
        try:
            # both frames in one go, without yielding, so no other message on this conn lands between them
            for frame in message_frames(conn_id, message):
                self._writer.write(frame)
            await self._writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._set_error(MuxClosedError(f"NRI socket write failed: {exc}"))
            self._shutdown()
            raise ConnectionClosedError(f"NRI socket write failed on conn {conn_id}: {exc}") from exc

    def _shutdown(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for conn in self._conns.values():
            # never block here: a full queue's reader will see the closed mux after draining
            while True:
                try:
                    conn._queue.put_nowait(_EOF)
                    break
                except asyncio.QueueFull:
                    conn._queue.get_nowait()
        self._writer.close()

    def close(self) -> None:
        """Close the trunk and every conn (idempotent)."""
        self._shutdown()
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()
