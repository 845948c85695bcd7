"""HTTP/1.1 client side of bench/gpu_http.py: the fixed request, a response reader, and the in-container client.

    python3 infer_client.py DATA_DIR PORT

run beside infer_server.py in the same container: sends DATA_DIR/request.bin every 0.25 s over one kept-open
connection and appends "<time> <local port> <answer number on this connection> <sha256 of the response>" to
DATA_DIR/client.log ("<time> ERR <error>" and a new connection when one breaks). Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import struct
import sys
import time
from typing import BinaryIO


def request_bytes(rows: int, width: int) -> bytes:
    """The fixed request: rows x width float32 from a seeded generator."""
    rng = random.Random(7)
    body = struct.pack(f"<{rows * width}f", *(rng.gauss(0.0, 1.0) for _ in range(rows * width)))
    return (b"POST /v1/infer HTTP/1.1\r\nHost: gpucr-bench\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def read_response(f: BinaryIO) -> bytes:
    """One whole response (status line, headers, Content-Length body), as the bytes that came."""
    head = f.readline()
    if not head:
        raise ConnectionError("connection closed by the server")
    n = 0
    while True:
        line = f.readline()
        head += line
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    body = f.read(n)
    if len(body) != n:
        raise ConnectionError(f"short body {len(body)}/{n}")
    return bytes(head + body)


def main(d: str, port: int) -> None:
    with open(os.path.join(d, "request.bin"), "rb") as f:
        req = f.read()
    out = open(os.path.join(d, "client.log"), "a", buffering=1)
    s = None
    while True:
        try:
            if s is None:
                s = socket.create_connection(("127.0.0.1", port), timeout=600)
                f, n, local = s.makefile("rb"), 0, s.getsockname()[1]
            s.sendall(req)
            raw = read_response(f)
            n += 1
            out.write(f"{time.time():.3f} {local} {n} {hashlib.sha256(raw).hexdigest()}\n")
        except (OSError, ValueError) as e:
            out.write(f"{time.time():.3f} ERR {e!r}\n")
            s = None
        time.sleep(0.25)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
