"""CRIU driven over its RPC protocol (``criu swrk``): pure request building in ``rpc``, socket I/O in ``client``.

The message definitions are gpucr's own subset of CRIU 4.1's ``images/rpc.proto`` (``proto/rpc.proto``), compiled by
``tools/genproto.py`` into ``_pb/rpc_pb2``.
"""

__all__: list[str] = []
