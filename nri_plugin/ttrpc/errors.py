"""ttrpc's error family: framing violations (the peer broke the wire format) and call failures (a status code).

Codes are gRPC's (``google.golang.org/grpc/codes``), which ttrpc reuses on the wire in ``Response.status``.
"""

from __future__ import annotations

from enum import IntEnum

from ..errors import GpucrError

__all__ = ["Code", "ConnectionClosedError", "FrameError", "OversizedMessageError", "TTRPCError"]


class Code(IntEnum):
    """gRPC status codes as carried in ttrpc's ``Response.status.code``."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class FrameError(GpucrError):
    """The byte stream is not valid ttrpc (the peer's fault); the connection cannot be trusted any more."""


class OversizedMessageError(GpucrError):
    """A message is over ttrpc's 4 MiB limit (raised by the encoder: our own fault, nothing was sent)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"ttrpc message of {length} bytes exceeds the {limit}-byte limit; nothing was sent")
        self.length = length
        self.limit = limit


class TTRPCError(GpucrError):
    """A call ended with a non-OK status: from the peer's Response, or raised locally (deadline, closed conn).

    Raised by a server-side handler, it is turned into that status on the wire.
    """

    def __init__(self, code: int, message: str) -> None:
        try:
            name = Code(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"{name}: {message}")
        self.code = code
        self.status_message = message


class ConnectionClosedError(TTRPCError):
    """The connection closed (EOF or transport error) before the call was answered."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)
