"""A TCP server for real CRIU tests, a line client for it, and which CRIU can dump TCP sockets on this kernel.

The server (one Python process, its own session, stdio to a file) listens on 127.0.0.1 and answers every line
``L`` on any connection with ``"<n> <pid> L"``, ``n`` counting the lines it has served since it started: an answer
after a restore shows the restored memory (``n`` goes on) and the restored socket (the same connection answers).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.testenv import kill_and_reap, wait_for

# Kernels from 6.16 refuse SO_PASSCRED on TCP/UDP sockets; CRIU before 4.2 reads it on every socket it dumps and fails
# ("Can't get 1:16 opt: Operation not supported"); CRIU 4.2 reads it on unix and netlink sockets only.
KERNEL_REFUSES_PASSCRED = (6, 16)
CRIU_FIXED = (4, 2)

SERVER = r"""
import os, selectors, socket, sys
srv = socket.create_server(("127.0.0.1", 0))
srv.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
bufs = {}
served = 0
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(str(srv.getsockname()[1]))
os.rename(tmp, sys.argv[1])
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is srv:
            c, _ = srv.accept()
            c.setblocking(True)
            sel.register(c, selectors.EVENT_READ)
            bufs[c] = b""
            continue
        data = s.recv(4096)
        if not data:
            sel.unregister(s)
            s.close()
            del bufs[s]
            continue
        bufs[s] += data
        while b"\n" in bufs[s]:
            line, bufs[s] = bufs[s].split(b"\n", 1)
            served += 1
            s.sendall(b"%d %d %s\n" % (served, os.getpid(), line))
"""


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def criu_dumps_tcp(criu_version: tuple[int, int, int]) -> bool:
    """Whether this CRIU can dump a process with a TCP socket on the running kernel."""
    return criu_version[:2] >= CRIU_FIXED or kernel_version() < KERNEL_REFUSES_PASSCRED


class TcpServer:
    """The running server (``pid``, ``port``)."""

    def __init__(self, tmp: Path) -> None:
        port_file = tmp / "port"
        self.out = open(tmp / "server.out", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port_file)], stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
        self.pid = self.proc.pid
        wait_for(port_file.exists, what=f"TCP server (pid {self.pid}) to listen")
        self.port = int(port_file.read_text())

    def connect(self) -> LineClient:
        return LineClient(socket.create_connection(("127.0.0.1", self.port), timeout=10))

    def wait_gone(self) -> None:
        """After a dump that killed the server: reap it, so its pid and port are free for the restore."""
        self.proc.wait(10)

    def kill(self) -> None:
        kill_and_reap([self.pid], self.proc)
        self.out.close()


class LineClient:
    """One connection to the server: ``ask(line)`` sends a line and returns the answer line."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def ask(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\n")
        answer = self.file.readline()
        assert answer.endswith(b"\n"), f"the server closed the connection (read {answer!r})"
        return answer.decode().rstrip("\n")

    def close(self) -> None:
        self.file.close()
        self.sock.close()
