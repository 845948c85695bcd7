"""ttrpc client and server over a real socketpair: dispatch, status codes, ordering, deadlines, bad input."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from nri_plugin.ttrpc import (MAX_MESSAGE_BYTES, Channel, Client, Code, ConnectionClosedError, FrameError, MessageType,
                              OversizedMessageError, RequestContext, Server, SocketStream, TTRPCError, encode_frame)
from nri_plugin.ttrpc._pb import ttrpc_pb2 as pb
from tests.fakes.aio import run, socketpair

SVC = "test.Echo"


async def channel(sock: socket.socket) -> Channel:
    r, w = await asyncio.open_unix_connection(sock=sock)
    return Channel(SocketStream(r, w))


async def echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload[::-1]


async def boom(payload: bytes, ctx: RequestContext) -> bytes:
    raise ValueError("handler exploded for container c1")


async def denied(payload: bytes, ctx: RequestContext) -> bytes:
    raise TTRPCError(Code.PERMISSION_DENIED, "no")


async def sleepy(payload: bytes, ctx: RequestContext) -> bytes:
    await asyncio.sleep(float(payload.decode()))
    return payload


async def deadline(payload: bytes, ctx: RequestContext) -> bytes:
    return repr(ctx.timeout_s).encode()


HANDLERS = {(SVC, "Echo"): echo, (SVC, "Boom"): boom, (SVC, "Denied"): denied, (SVC, "Sleep"): sleepy,
            (SVC, "Deadline"): deadline}


async def pair() -> tuple[Client, Server, asyncio.Task[None]]:
    a, b = socketpair()
    server = Server(await channel(a), HANDLERS)
    task = asyncio.get_running_loop().create_task(server.serve())
    client = Client(await channel(b))
    client.start()
    return client, server, task


def test_unary_calls_and_statuses() -> None:
    async def main() -> None:
        client, server, task = await pair()
        assert await client.call(SVC, "Echo", b"abc") == b"cba"
        assert await client.call(SVC, "Echo", b"") == b""
        with pytest.raises(TTRPCError) as ei:
            await client.call(SVC, "Nope", b"")
        assert ei.value.code == Code.UNIMPLEMENTED and "test.Echo/Nope" in ei.value.status_message
        with pytest.raises(TTRPCError) as ei:
            await client.call("other.Svc", "Echo", b"")
        assert ei.value.code == Code.UNIMPLEMENTED
        with pytest.raises(TTRPCError) as ei:
            await client.call(SVC, "Boom", b"")
        assert ei.value.code == Code.UNKNOWN and "handler exploded for container c1" in ei.value.status_message
        with pytest.raises(TTRPCError) as ei:
            await client.call(SVC, "Denied", b"")
        assert ei.value.code == Code.PERMISSION_DENIED
        # the server survived every error
        assert await client.call(SVC, "Echo", b"xy") == b"yx"
        assert float(await client.call(SVC, "Deadline", b"", timeout_s=1.5)) == pytest.approx(1.5)
        assert await client.call(SVC, "Deadline", b"") == b"None"
        await client.close()
        await asyncio.wait_for(task, 5)
        server.close()

    run(main())


def test_responses_in_completion_order() -> None:
    async def main() -> None:
        client, server, task = await pair()
        done: list[bytes] = []

        async def one(delay: str) -> None:
            done.append(await client.call(SVC, "Sleep", delay.encode()))

        await asyncio.gather(one("0.4"), one("0.01"), one("0.2"))
        assert done == [b"0.01", b"0.2", b"0.4"]
        await client.close()
        await task
        server.close()

    run(main())


def test_client_deadline() -> None:
    async def main() -> None:
        client, server, task = await pair()
        with pytest.raises(TTRPCError) as ei:
            await client.call(SVC, "Sleep", b"5", timeout_s=0.2)
        assert ei.value.code == Code.DEADLINE_EXCEEDED
        assert await client.call(SVC, "Echo", b"ok") == b"ko"
        await client.close()
        await task
        server.close()

    run(main())


def test_big_messages_both_ways() -> None:
    async def main() -> None:
        client, server, task = await pair()
        big = bytes(range(256)) * 8000  # ~2 MB
        assert await client.call(SVC, "Echo", big) == big[::-1]
        with pytest.raises(OversizedMessageError):
            await client.call(SVC, "Echo", bytes(MAX_MESSAGE_BYTES))
        await client.close()
        await task
        server.close()

    run(main())


async def raw_server() -> tuple[socket.socket, asyncio.Task[None]]:
    a, b = socketpair()
    server = Server(await channel(a), HANDLERS)

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            server.close()

    return b, asyncio.get_running_loop().create_task(serve())


async def read_response(sock: socket.socket) -> tuple[int, pb.Response]:
    loop = asyncio.get_running_loop()
    head = b""
    while len(head) < 10:
        head += await loop.sock_recv(sock, 10 - len(head))
    length, sid, typ, _ = struct.unpack(">IIBB", head)
    assert typ == MessageType.RESPONSE
    body = b""
    while len(body) < length:
        body += await loop.sock_recv(sock, length - len(body))
    r = pb.Response()
    r.ParseFromString(body)
    return sid, r


def request(stream: int, method: str = "Echo", payload: bytes = b"a") -> bytes:
    return encode_frame(stream, MessageType.REQUEST,
                        pb.Request(service=SVC, method=method, payload=payload).SerializeToString())


def test_stream_id_rules_oversize_and_unknown_types() -> None:
    async def main() -> None:
        sock, task = await raw_server()
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, request(2))
        sid, r = await read_response(sock)
        assert (sid, r.status.code) == (2, Code.INVALID_ARGUMENT) and "must be odd" in r.status.message
        await loop.sock_sendall(sock, request(5))
        assert (await read_response(sock))[1].payload == b"a"
        await loop.sock_sendall(sock, request(3))
        sid, r = await read_response(sock)
        assert r.status.code == Code.INVALID_ARGUMENT and "re-used" in r.status.message
        # a message type the server does not know is ignored; a data frame too
        await loop.sock_sendall(sock, encode_frame(7, 0x09, b"zz") + encode_frame(7, MessageType.DATA, b"zz"))
        # a request over 4 MiB: payload skipped, RESOURCE_EXHAUSTED on its stream, connection stays up
        big = MAX_MESSAGE_BYTES + 1
        await loop.sock_sendall(sock, struct.pack(">IIBB", big, 9, 1, 0) + bytes(big))
        sid, r = await read_response(sock)
        assert (sid, r.status.code) == (9, Code.RESOURCE_EXHAUSTED)
        # an undecodable request body
        await loop.sock_sendall(sock, encode_frame(11, MessageType.REQUEST, b"\xff\xff\xff"))
        sid, r = await read_response(sock)
        assert (sid, r.status.code) == (11, Code.INVALID_ARGUMENT)
        await loop.sock_sendall(sock, request(13, payload=b"still here"))
        assert (await read_response(sock))[1].payload == b"ereh llits"
        sock.close()
        await asyncio.wait_for(task, 5)  # clean EOF: serve returns

    run(main())


def test_garbage_ends_serve_with_frame_error() -> None:
    async def main() -> None:
        sock, task = await raw_server()
        await asyncio.get_running_loop().sock_sendall(sock, b"\xde\xad\xbe\xef" * 8)
        with pytest.raises(FrameError):
            await asyncio.wait_for(task, 5)
        sock.close()

    run(main())


def test_eof_fails_pending_calls() -> None:
    async def main() -> None:
        a, b = socketpair()
        client = Client(await channel(b))
        client.start()
        call = asyncio.ensure_future(client.call(SVC, "Echo", b"x", timeout_s=10))
        await asyncio.sleep(0.05)
        a.close()
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(call, 5)
        with pytest.raises(ConnectionClosedError):
            await client.call(SVC, "Echo", b"x")
        await client.close()
        b.close()

    run(main())
