"""CRIU driven over its RPC protocol (``criu swrk``): options in ``options``, pure request building and response
checks in ``rpc``, socket and process I/O in ``client``.

The message definitions are gpucr's own subset of CRIU 4.1's ``images/rpc.proto`` (``proto/rpc.proto``), compiled by
``tools/genproto.py`` into ``_pb/rpc_pb2``.
"""

from .client import Criu, DumpResult, NotifyCallback, RestoreResult
from .errors import CriuError
from .options import CgroupMode, DumpOptions, JoinNamespace, NetworkLock, RestoreOptions
from .rpc import MIN_VERSION, Notify

__all__ = [
    "MIN_VERSION", "CgroupMode", "Criu", "CriuError", "DumpOptions", "DumpResult", "JoinNamespace", "NetworkLock",
    "Notify", "NotifyCallback", "RestoreOptions", "RestoreResult",
]
