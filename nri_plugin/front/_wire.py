"""Just enough of the protobuf wire format to read and patch CRIU RPC messages without importing protobuf.

Why hand-decode: the front starts twice per runc operation (the VERSION call, then the real one), and importing
the generated ``rpc_pb2`` alone costs ~56 ms of start-up. The front reads a handful of scalar fields and
patches three fd numbers; everything else must reach CRIU byte for byte, including fields this code has never heard of.
So a message is handled as a list of raw :class:`Field` spans: unknown fields are kept by construction, and
re-encoding only touches the fields a caller replaced.

Follows the protobuf encoding spec (varint, i64, len, i32 wire types; groups are rejected). Pure: no I/O, no logging.
No dataclasses/typing/enum imports either: on this path they would cost more start-up time than the whole relay
(``-X importtime``: dataclasses ~45 ms, typing ~26 ms, enum ~7 ms cold).
"""

from __future__ import annotations

__all__ = ["Field", "WireError", "decode", "encode", "encode_varint", "field_bytes", "to_int32", "varint_field"]

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_MAX_FIELD = (1 << 29) - 1


class WireError(ValueError):
    """The bytes are not a protobuf message (the peer's fault: truncated, garbage or a group)."""


class Field:
    """One field occurrence: its number, wire type, and value (int for varint/fixed, bytes for LEN). Immutable."""

    __slots__ = ("number", "wire_type", "value")

    def __init__(self, number: int, wire_type: int, value: int | bytes) -> None:
        self.number = number
        self.wire_type = wire_type
        self.value = value

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Field) and (self.number, self.wire_type, self.value)
                == (other.number, other.wire_type, other.value))

    def __hash__(self) -> int:
        return hash((self.number, self.wire_type, self.value))

    def __repr__(self) -> str:
        return f"Field({self.number}, {self.wire_type}, {self.value!r})"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise WireError(f"truncated varint at byte {pos}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def decode(data: bytes) -> list[Field]:
    """Split ``data`` into fields in wire order.

    Raises:
        WireError: truncated input, a field number of 0, or a wire type this format does not allow here.
    """
    fields: list[Field] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wt = key >> 3, key & 7
        if number == 0:
            raise WireError(f"field number 0 at byte {pos}")
        value: int | bytes
        if wt == VARINT:
            value, pos = _varint(data, pos)
        elif wt == LEN:
            n, pos = _varint(data, pos)
            if pos + n > len(data):
                raise WireError(f"field {number}: length {n} runs past the end ({len(data) - pos} bytes left)")
            value, pos = data[pos:pos + n], pos + n
        elif wt in (I64, I32):
            size = 8 if wt == I64 else 4
            if pos + size > len(data):
                raise WireError(f"field {number}: truncated fixed{size * 8}")
            value, pos = int.from_bytes(data[pos:pos + size], "little"), pos + size
        else:
            raise WireError(f"field {number}: unsupported wire type {wt}")
        fields.append(Field(number, wt, value))
    return fields


def encode_varint(value: int) -> bytes:
    """Varint of a non-negative int, or of a negative int32/int64 as protobuf does (two's complement, 10 bytes)."""
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(f: Field) -> bytes:
    """The wire bytes of one field (key and value)."""
    if not 0 < f.number <= _MAX_FIELD:
        raise WireError(f"field number {f.number} out of range")
    key = encode_varint(f.number << 3 | f.wire_type)
    if f.wire_type == VARINT:
        assert isinstance(f.value, int)
        return key + encode_varint(f.value)
    if f.wire_type == LEN:
        assert isinstance(f.value, bytes)
        return key + encode_varint(len(f.value)) + f.value
    assert isinstance(f.value, int)
    return key + f.value.to_bytes(8 if f.wire_type == I64 else 4, "little")


def encode(fields: list[Field]) -> bytes:
    """Concatenate fields in the given order (decode then encode of untouched fields gives the same bytes,
    except for non-minimal varints, which no protobuf encoder emits)."""
    return b"".join(field_bytes(f) for f in fields)


def varint_field(number: int, value: int) -> Field:
    """A varint field; negative int32 values are sign-extended to 64 bits as protobuf requires."""
    return Field(number, VARINT, value)


def to_int32(value: int) -> int:
    """Interpret a decoded varint as protobuf int32 (negative numbers arrive as 64-bit two's complement)."""
    value &= (1 << 64) - 1
    if value >= 1 << 63:
        value -= 1 << 64
    return value
