"""ttrpc framing, sans-I/O: the 10-byte header and an incremental decoder (bytes in, frames out).

Wire format (containerd/ttrpc ``channel.go``/``PROTOCOL.md``): big-endian ``length u32 | stream id u32 | type u8 |
flags u8`` followed by ``length`` payload bytes, ``length <= 4 MiB``. Like the Go receiver, a frame over the limit
is not an error of the connection: its payload is skipped and the decoder reports an :class:`OversizedFrame` so the
caller can answer RESOURCE_EXHAUSTED on that stream. This module does no I/O, no logging and knows nothing of
protobuf; stream-id rules (odd, increasing) are the server's business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from .errors import FrameError, OversizedMessageError

__all__ = ["HEADER_LEN", "MAX_MESSAGE_BYTES", "Frame", "FrameDecoder", "Flags", "MessageType", "OversizedFrame",
           "encode_frame"]

HEADER_LEN = 10
MAX_MESSAGE_BYTES = 4 << 20
#: a declared length this far over the limit cannot come from a ttrpc peer (Go never sends over 4 MiB + 10 in
#: one message): skipping gigabytes of "payload" would only stall, so the stream is declared garbage instead.
MAX_SKIP_BYTES = 16 << 20
_HEADER = struct.Struct(">IIBB")


class MessageType(IntEnum):
    REQUEST = 0x01
    RESPONSE = 0x02
    DATA = 0x03


class Flags(IntFlag):
    NONE = 0x00
    REMOTE_CLOSED = 0x01
    REMOTE_OPEN = 0x02
    NO_DATA = 0x04


@dataclass(frozen=True, slots=True)
class Frame:
    """One ttrpc message. ``type`` is an int so unknown types reach the caller (Go servers ignore them)."""

    stream_id: int
    type: int
    flags: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame whose declared length was over the limit; its payload was (or is being) skipped."""

    stream_id: int
    type: int
    length: int


def encode_frame(stream_id: int, msg_type: int, payload: bytes, flags: int = 0) -> bytes:
    """Header + payload as one bytes object.

    Raises:
        OversizedMessageError: payload over 4 MiB (nothing is produced; ttrpc >= 1.2.6 senders do the same).
        ValueError: a stream id or type that does not fit the header.
    """
    if len(payload) > MAX_MESSAGE_BYTES:
        raise OversizedMessageError(len(payload), MAX_MESSAGE_BYTES)
    if not 0 <= stream_id <= 0xFFFFFFFF or not 0 <= msg_type <= 0xFF or not 0 <= flags <= 0xFF:
        raise ValueError(f"ttrpc header field out of range: stream {stream_id}, type {msg_type}, flags {flags}")
    return _HEADER.pack(len(payload), stream_id, msg_type, flags) + payload


class FrameDecoder:
    """Incremental decoder: :meth:`feed` any split of the byte stream, get complete frames back in order.

    After a :class:`FrameError` the decoder is poisoned (every later call raises the same error): a stream that
    lost framing cannot be resynchronised.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_message_bytes
        self._skip = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        """Consume ``data``; return the frames (and oversize notices) it completed.

        Raises:
            FrameError: the declared length is so large the stream cannot be ttrpc.
        """
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        if self._skip:
            n = min(self._skip, len(view))
            self._skip -= n
            view = view[n:]
        self._buf += view
        out: list[Frame | OversizedFrame] = []
        while len(self._buf) >= HEADER_LEN:
            length, stream_id, msg_type, flags = _HEADER.unpack_from(self._buf)
            if length > self._max:
                if length > MAX_SKIP_BYTES:
                    self._error = FrameError(
                        f"ttrpc frame header declares {length} bytes (limit {self._max}): the peer is not speaking "
                        f"ttrpc (first header bytes {bytes(self._buf[:HEADER_LEN]).hex()})")
                    raise self._error
                out.append(OversizedFrame(stream_id, msg_type, length))
                del self._buf[:HEADER_LEN]
                n = min(length, len(self._buf))
                del self._buf[:n]
                self._skip = length - n
                if self._skip:
                    break
                continue
            end = HEADER_LEN + length
            if len(self._buf) < end:
                break
            out.append(Frame(stream_id, msg_type, flags, bytes(self._buf[HEADER_LEN:end])))
            del self._buf[:end]
        return out
