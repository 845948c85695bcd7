"""The asyncio mux over a real socketpair: two conns carrying ttrpc both ways, interleaving, EOF, garbage."""

from __future__ import annotations

import asyncio
import struct

import pytest

from nri_plugin.mux import FIRST_FRAME_BYTES, Mux, MuxDecoder, encode_frame
from nri_plugin.ttrpc import Channel, Client, ConnectionClosedError, RequestContext, Server
from tests.fakes.aio import run, socketpair


async def echo(payload: bytes, ctx: RequestContext) -> bytes:
    return payload


def test_two_ttrpc_connections_both_directions() -> None:
    """The NRI shape: side A serves on conn 1 and calls on conn 2; side B the reverse."""

    async def main() -> None:
        a, b = socketpair()
        ma, mb = await Mux.from_socket(a), await Mux.from_socket(b)
        sa = Server(Channel(ma.open(1)), {("svc", "Echo"): echo})
        ca = Client(Channel(ma.open(2)))
        sb = Server(Channel(mb.open(2)), {("svc", "Echo"): echo})
        cb = Client(Channel(mb.open(1)))
        for m in (ma, mb):
            m.start()
        tasks = [asyncio.ensure_future(s.serve()) for s in (sa, sb)]
        big = bytes(range(256)) * 40  # 10 KiB: two mux frames each way
        results = await asyncio.gather(*[c.call("svc", "Echo", big + bytes([i])) for i in range(20)
                                         for c in (ca, cb)])
        assert all(r[:-1] == big for r in results)
        ma.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in (ca, cb):
            await c.close()
        mb.close()

    run(main())


def test_writes_never_exceed_4096_per_frame_and_never_mix_messages() -> None:
    async def main() -> None:
        a, b = socketpair()
        ma = await Mux.from_socket(a)
        conn = ma.open(1)
        ma.start()
        msgs = [bytes([i]) * n for i, n in enumerate([100, 4096, 4097, 9000, 3])]
        await asyncio.gather(*[conn.write(m) for m in msgs])
        loop = asyncio.get_running_loop()
        total = sum(len(m) for m in msgs) + 8 * 7
        raw = b""
        while len(raw) < total:
            raw += await loop.sock_recv(b, 65536)
        frames = MuxDecoder().feed(raw)
        assert all(len(p) <= FIRST_FRAME_BYTES or p[0:1] * len(p) == p for _, p in frames)
        assert [len(p) for _, p in frames] == [100, 4096, 4096, 1, 4096, 4904, 3]
        ma.close()
        b.close()

    run(main())


def test_eof_and_garbage_and_unopened_conn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # clean EOF: reads return b""
        a, b = socketpair()
        m = await Mux.from_socket(a)
        c1 = m.open(1)
        m.start()
        await loop.sock_sendall(b, encode_frame(1, b"hello"))
        assert await c1.read() == b"hello"
        b.close()
        assert await c1.read() == b""
        assert m.error is None
        with pytest.raises(ConnectionClosedError):
            await c1.write(b"x")
        # garbage: reads raise with the reason, and keep raising
        for junk, why in [(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid NRI mux frame header"),
                          (encode_frame(7, b"zz"), "conn 7, which is not open"),
                          (struct.pack(">II", 1, 100) + b"short", "middle of a mux frame")]:
            a, b = socketpair()
            m = await Mux.from_socket(a)
            c1, c2 = m.open(1), m.open(2)
            m.start()
            await loop.sock_sendall(b, junk)
            if why == "middle of a mux frame":
                b.close()
            for c in (c1, c2):
                with pytest.raises(ConnectionClosedError, match=why):
                    await asyncio.wait_for(c.read(), 5)
            with pytest.raises(ConnectionClosedError, match=why):
                await c1.read()
            m.close()
            b.close()

    run(main())
