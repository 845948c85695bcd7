"""NRI's connection-multiplexer framing, sans-I/O (containerd/nri ``pkg/net/multiplex/mux.go``).

A mux frame is ``conn id u32 | length u32`` (big-endian) + ``length`` bytes of one logical connection's stream.
Reading: frames are reassembled per connection; ttrpc frames are *not* aligned to mux frames.
Writing: the Go reader reads each connection through a 4096-byte ``bufio.Reader`` and fails with ENOMEM on a mux frame
larger than its buffer when it parses a header, so every ttrpc message goes out as frame A (its first
``min(4096, len)`` bytes) and, if longer, frame B (the rest) -- the shape Go's own ``bufio.Writer`` produces -- and
two messages never share a frame. This module does no I/O.
"""

from __future__ import annotations

import struct

from .errors import MuxFrameError

__all__ = ["FIRST_FRAME_BYTES", "HEADER_LEN", "MAX_FRAME_BYTES", "MuxDecoder", "encode_frame", "message_frames"]

HEADER_LEN = 8
#: the Go reader's buffer: a frame that starts a ttrpc message must fit in it (exactly 4096 works, 4097 fails)
FIRST_FRAME_BYTES = 4096
#: the largest frame a runtime sends: NRI v0.3-v0.6.1 allowed 16 MiB per write, v0.7+ splits at 10 + 4 MiB
MAX_FRAME_BYTES = 1 << 24
_HEADER = struct.Struct(">II")


def encode_frame(conn_id: int, payload: bytes) -> bytes:
    """One mux frame (no size policy: see :func:`message_frames`)."""
    if not 0 < conn_id <= 0xFFFFFFFF:
        raise ValueError(f"mux conn id {conn_id} out of range (0 is reserved)")
    return _HEADER.pack(conn_id, len(payload)) + payload


def message_frames(conn_id: int, message: bytes) -> list[bytes]:
    """The frames carrying one whole ttrpc message: the first 4096 bytes, then the rest in one frame."""
    if len(message) <= FIRST_FRAME_BYTES:
        return [encode_frame(conn_id, message)]
    return [encode_frame(conn_id, message[:FIRST_FRAME_BYTES]), encode_frame(conn_id, message[FIRST_FRAME_BYTES:])]


class MuxDecoder:
    """Incremental decoder: :meth:`feed` trunk bytes in any split, get ``(conn id, payload)`` pairs back.

    Conn id 0 and frames over :data:`MAX_FRAME_BYTES` raise :class:`MuxFrameError`, and the decoder stays
    poisoned: nothing after lost framing can be trusted.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_frame_bytes
        self._error: MuxFrameError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= HEADER_LEN:
            conn_id, length = _HEADER.unpack_from(self._buf)
            if conn_id == 0 or length > self._max:
                self._error = MuxFrameError(
                    f"invalid NRI mux frame header {bytes(self._buf[:HEADER_LEN]).hex()} (conn {conn_id}, {length} "
                    f"bytes; conn 0 is reserved and frames are at most {self._max} bytes): the peer is not an NRI "
                    "runtime or the stream lost framing")
                raise self._error
            end = HEADER_LEN + length
            if len(self._buf) < end:
                break
            out.append((conn_id, bytes(self._buf[HEADER_LEN:end])))
            del self._buf[:end]
        return out
