"""NRI's connection multiplexer: two ttrpc connections (conn 1: plugin service, conn 2: runtime service) over one
unix stream socket. ``_frame`` is the sans-I/O codec, ``mux`` the asyncio transport.
"""

from ._frame import FIRST_FRAME_BYTES, HEADER_LEN, MAX_FRAME_BYTES, MuxDecoder, encode_frame, message_frames
from .errors import MuxClosedError, MuxFrameError
from .mux import PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN, Mux, MuxConn

__all__ = ["FIRST_FRAME_BYTES", "HEADER_LEN", "MAX_FRAME_BYTES", "PLUGIN_SERVICE_CONN", "RUNTIME_SERVICE_CONN", "Mux",
           "MuxClosedError", "MuxConn", "MuxDecoder", "MuxFrameError", "encode_frame", "message_frames"]
