"""CRIU driven over its RPC protocol (``criu swrk``): options in ``options``, pure request building and response
checks in ``rpc``, socket and process I/O in ``client``.

The message definitions are gpucr's own subset of CRIU 4.1's ``images/rpc.proto`` (``proto/rpc.proto``), compiled by
``tools/genproto.py`` into ``_pb/rpc_pb2``.

The names below are loaded on first use (PEP 562), so a CRIU front that only needs ``_pb.rpc_pb2`` does not pay for
the client's imports at start-up (runc starts criu twice per checkpoint).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Criu, DumpResult, NotifyCallback, RestoreResult
    from .errors import CriuError
    from .options import CgroupMode, DumpOptions, JoinNamespace, NetworkLock, RestoreOptions, as_record
    from .rpc import MIN_VERSION, Notify

_WHERE = {
    "Criu": "client", "DumpResult": "client", "NotifyCallback": "client", "RestoreResult": "client",
    "CriuError": "errors",
    "CgroupMode": "options", "DumpOptions": "options", "JoinNamespace": "options", "NetworkLock": "options",
    "RestoreOptions": "options", "as_record": "options",
    "MIN_VERSION": "rpc", "Notify": "rpc",
}

__all__ = [
    "MIN_VERSION", "CgroupMode", "Criu", "CriuError", "DumpOptions", "DumpResult", "JoinNamespace", "NetworkLock",
    "Notify", "NotifyCallback", "RestoreOptions", "RestoreResult", "as_record",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
