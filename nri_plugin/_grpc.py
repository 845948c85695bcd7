"""What gpucr's two gRPC clients share (``cri/client.py``: the CRI runtime service; ``containerd/tasks.py``:
containerd's task service): a channel to a unix socket that is also a context manager, an error carrying the gRPC
status code, and the call that turns ``grpc.RpcError`` into that error, naming the call and the socket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from .errors import GpucrError

__all__ = ["GrpcClient", "RpcCallError"]


class RpcCallError(GpucrError):
    """A gRPC call failed; ``code`` is the gRPC status code (``grpc.StatusCode``), None when unknown."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class GrpcClient:
    """One channel to the gRPC socket ``address`` (``unix://`` optional). A context manager; subclasses make their
    stubs from ``self._channel`` and set ``error`` to their :class:`RpcCallError` subclass."""

    error: type[RpcCallError] = RpcCallError

    def __init__(self, address: str, timeout_s: float, options: Sequence[tuple[str, Any]] = ()) -> None:
        self.address = address.removeprefix("unix://")
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(f"unix://{self.address}", options=list(options) or None)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc(self, stub: Any, method: str, request: Any, what: str, timeout_s: float | None = None,
             metadata: Sequence[tuple[str, str]] | None = None) -> Any:
        """``stub.method(request)``; a failure raises :attr:`error` ``"{what} failed on {address}: {CODE}: {detail}"``."""
        try:
            return getattr(stub, method)(request, timeout=timeout_s or self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            raise self.error(f"{what} failed on {self.address}: {name}: {detail}", code) from exc
