"""Mux framing: the fact sheet's worked bytes, the two-frame write shape, every split, garbage (property tests)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.mux import FIRST_FRAME_BYTES, MAX_FRAME_BYTES, MuxDecoder, MuxFrameError, encode_frame, message_frames
from nri_plugin.ttrpc import MessageType
from nri_plugin.ttrpc import encode_frame as ttrpc_frame
from tests.ttrpc.test_frame import REQUEST


def test_worked_bytes_on_the_socket() -> None:
    msg = ttrpc_frame(1, MessageType.REQUEST, REQUEST)
    [wire] = message_frames(2, msg)
    assert wire[:8] == bytes.fromhex("00000002" "00000042")
    assert len(wire) == 74
    assert MuxDecoder().feed(wire) == [(2, msg)]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 6000, 10 + (4 << 20)])
def test_message_frames_shape(size: int) -> None:
    msg = bytes(i % 251 for i in range(size))
    frames = message_frames(1, msg)
    first_len = struct.unpack(">I", frames[0][4:8])[0]
    assert first_len == min(size, FIRST_FRAME_BYTES)  # the Go reader's 4096-byte buffer: never more
    assert len(frames) == (1 if size <= FIRST_FRAME_BYTES else 2)
    assert b"".join(p for _, p in MuxDecoder().feed(b"".join(frames))) == msg


def test_every_split_reassembles() -> None:
    msgs = [(1, b"a" * 5000), (2, b"b" * 10), (1, b""), (2, bytes(range(256)) * 17)]
    wire = b"".join(f for c, m in msgs for f in message_frames(c, m))
    for cut in range(0, len(wire) + 1, 7):
        d = MuxDecoder()
        got = d.feed(wire[:cut]) + d.feed(wire[cut:])
        per: dict[int, bytes] = {1: b"", 2: b""}
        for c, p in got:
            per[c] += p
        assert per == {1: b"a" * 5000, 2: b"b" * 10 + bytes(range(256)) * 17}


def test_bad_headers() -> None:
    with pytest.raises(MuxFrameError, match="conn 0"):
        MuxDecoder().feed(encode_frame(1, b"")[:0] + struct.pack(">II", 0, 1) + b"x")
    d = MuxDecoder()
    with pytest.raises(MuxFrameError, match="not an NRI runtime"):
        d.feed(struct.pack(">II", 1, MAX_FRAME_BYTES + 1))
    with pytest.raises(MuxFrameError):  # poisoned
        d.feed(encode_frame(1, b"ok"))
    with pytest.raises(ValueError):
        encode_frame(0, b"")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**32 - 1), st.binary(max_size=9000)), max_size=5),
       st.lists(st.integers(0, 50000), max_size=8))
def test_random_messages_random_splits(msgs: list[tuple[int, bytes]], cuts: list[int]) -> None:
    wire = b"".join(f for c, m in msgs for f in message_frames(c, m))
    d = MuxDecoder()
    got: list[tuple[int, bytes]] = []
    prev = 0
    for c in sorted(min(c, len(wire)) for c in cuts) + [len(wire)]:
        got += d.feed(wire[prev:c])
        prev = c
    assert all(len(p) <= max(FIRST_FRAME_BYTES, len(m)) for (_, p), (_, m) in zip(got, msgs, strict=False))
    expect: list[tuple[int, bytes]] = []
    for c, m in msgs:
        expect += [(c, m[:FIRST_FRAME_BYTES])] + ([(c, m[FIRST_FRAME_BYTES:])] if len(m) > FIRST_FRAME_BYTES else [])
    assert got == expect


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 3000), max_size=6))
def test_random_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    d = MuxDecoder()
    prev = 0
    try:
        for c in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
            for conn, payload in d.feed(data[prev:c]):
                assert conn != 0 and len(payload) <= MAX_FRAME_BYTES
            prev = c
    except MuxFrameError:
        pass
