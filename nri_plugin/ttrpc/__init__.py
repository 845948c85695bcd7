"""ttrpc (containerd's lightweight RPC) in pure Python: a sans-I/O frame codec plus a thin asyncio client/server.

Layers: ``_frame`` (bytes <-> frames, no I/O), ``channel`` (frames over a byte stream), ``client``/``server``
(unary calls and dispatch). Generated envelope messages live in ``_pb`` (``ttrpc.proto``).
"""

from ._frame import HEADER_LEN, MAX_MESSAGE_BYTES, Frame, FrameDecoder, MessageType, OversizedFrame, encode_frame
from .channel import ByteStream, Channel, SocketStream
from .client import Client
from .errors import Code, ConnectionClosedError, FrameError, OversizedMessageError, TTRPCError
from .server import Handler, RequestContext, Server

__all__ = ["HEADER_LEN", "MAX_MESSAGE_BYTES", "ByteStream", "Channel", "Client", "Code", "ConnectionClosedError",
           "Frame", "FrameDecoder", "FrameError", "Handler", "MessageType", "OversizedFrame", "OversizedMessageError",
           "RequestContext", "Server", "SocketStream", "TTRPCError", "encode_frame"]
