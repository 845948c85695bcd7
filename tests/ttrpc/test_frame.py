"""ttrpc framing: golden bytes from the fact sheet, every split, oversize and garbage (property tests)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nri_plugin.nri.api import pb as api
from nri_plugin.ttrpc import (MAX_MESSAGE_BYTES, Frame, FrameDecoder, FrameError, MessageType, OversizedFrame,
                              OversizedMessageError, encode_frame)
from nri_plugin.ttrpc._pb import ttrpc_pb2 as pb

# fact sheet §8.2: RegisterPlugin name "py", idx "10" on conn 2, stream 1
NRI_PAYLOAD = bytes.fromhex("0a02707912023130")
TTRPC_HEADER = bytes.fromhex("00000038" "00000001" "01" "00")
REQUEST = (b"\x0a\x1cnri.pkg.api.v1alpha1.Runtime" b"\x12\x0eRegisterPlugin" b"\x1a\x08" + NRI_PAYLOAD)


def test_worked_bytes_register_plugin_round_trip() -> None:
    nri = api.RegisterPluginRequest(plugin_name="py", plugin_idx="10").SerializeToString()
    assert nri == NRI_PAYLOAD
    req = pb.Request(service="nri.pkg.api.v1alpha1.Runtime", method="RegisterPlugin", payload=nri)
    body = req.SerializeToString()
    assert body == REQUEST and len(body) == 56
    wire = encode_frame(1, MessageType.REQUEST, body)
    assert wire == TTRPC_HEADER + REQUEST
    [frame] = FrameDecoder().feed(wire)
    assert frame == Frame(1, MessageType.REQUEST, 0, REQUEST)
    back = pb.Request()
    back.ParseFromString(frame.payload)
    assert back == req
    inner = api.RegisterPluginRequest()
    inner.ParseFromString(back.payload)
    assert (inner.plugin_name, inner.plugin_idx) == ("py", "10")


def test_worked_bytes_configure_response() -> None:
    assert api.ConfigureResponse(events=0x208).SerializeToString() == bytes.fromhex("108804")
    r = api.ConfigureResponse()
    r.ParseFromString(bytes.fromhex("108804"))
    assert r.events == 0x208


def test_ok_response_forms() -> None:
    for raw in (b"", bytes.fromhex("0a00")):
        r = pb.Response()
        r.ParseFromString(raw)
        assert r.status.code == 0 and r.payload == b""


def test_every_split_reassembles() -> None:
    frames = [Frame(1, 1, 0, REQUEST), Frame(3, 2, 0, b""), Frame(5, 1, 0, bytes(range(256)) * 20)]
    wire = b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in frames)
    for cut in range(len(wire) + 1):
        d = FrameDecoder()
        assert d.feed(wire[:cut]) + d.feed(wire[cut:]) == frames
        assert d.buffered == 0


def test_encoder_refuses_oversized() -> None:
    encode_frame(1, 1, bytes(MAX_MESSAGE_BYTES))
    with pytest.raises(OversizedMessageError, match="4194305 bytes exceeds"):
        encode_frame(1, 1, bytes(MAX_MESSAGE_BYTES + 1))


def test_oversized_frame_is_skipped_and_reported() -> None:
    big = MAX_MESSAGE_BYTES + 5
    wire = (big).to_bytes(4, "big") + (7).to_bytes(4, "big") + b"\x01\x00" + bytes(big) + encode_frame(9, 1, b"ok")
    d = FrameDecoder()
    out = []
    for i in range(0, len(wire), 1 << 20):
        out += d.feed(wire[i:i + (1 << 20)])
    assert out == [OversizedFrame(7, 1, big), Frame(9, 1, 0, b"ok")]


def test_garbage_length_poisons_decoder() -> None:
    d = FrameDecoder()
    with pytest.raises(FrameError, match="not speaking ttrpc"):
        d.feed(b"GET / HTTP/1.1\r\n")
    with pytest.raises(FrameError):
        d.feed(encode_frame(1, 1, b"x"))


frame_st = st.builds(Frame, st.integers(0, 2**32 - 1), st.integers(0, 255), st.integers(0, 255),
                     st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_st, max_size=6), st.lists(st.integers(0, 2000), max_size=8))
def test_random_frames_random_splits(frames: list[Frame], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(f.stream_id, f.type, f.payload, f.flags) for f in frames)
    d = FrameDecoder()
    out: list[object] = []
    prev = 0
    for c in sorted(min(c, len(wire)) for c in cuts) + [len(wire)]:
        out += d.feed(wire[prev:c])
        prev = c
    assert out == frames


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=5000), st.lists(st.integers(1, 5000), max_size=6))
def test_random_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    d = FrameDecoder()
    prev = 0
    try:
        for c in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
            for f in d.feed(data[prev:c]):
                assert isinstance(f, (Frame, OversizedFrame))
                if isinstance(f, Frame):
                    assert len(f.payload) <= MAX_MESSAGE_BYTES
            prev = c
    except FrameError:
        pass
    assert d.buffered <= len(data)
