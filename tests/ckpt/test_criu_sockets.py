"""Socket options of a dump against the real CRIU: an external unix socket needs ext_unix_sk (proves the option
reaches CRIU); a TCP socket dumps where this CRIU can on this kernel (CRIU >= 4.2, or a kernel before 6.16), and
otherwise (CRIU 4.1 on kernels >= 6.16) fails with an error that says why and what to do."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu import Criu, CriuError, DumpOptions
from tests.ckpt._tcp import criu_dumps_tcp
from tests.ckpt._workload import state

pytestmark = pytest.mark.criu


@pytest.fixture
def holder() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def _spawn(code: str, procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    return p


def test_external_unix_socket_needs_ext_unix_sk(criu_binary: str, images: Path, tmp_path: Path,
                                                holder: list[subprocess.Popen[bytes]]) -> None:
    path = str(tmp_path / "ext.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(10)
    p = _spawn("import socket, time; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); "
               f"s.connect({path!r}); s.send(b'hi'); time.sleep(100)", holder)
    assert srv.recv(10) == b"hi"
    criu = Criu(criu_binary)
    with pytest.raises(CriuError, match="External socket is used"):
        criu.dump(DumpOptions(pid=p.pid, images_dir=images, leave_running=True))
    assert state(p.pid) in "RSD"
    criu.dump(DumpOptions(pid=p.pid, images_dir=images, leave_running=True, ext_unix_sk=True))
    assert state(p.pid) in "RSD"
    srv.close()


def test_inet_socket(criu_binary: str, images: Path,
                     holder: list[subprocess.Popen[bytes]]) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    p = _spawn(f"import socket, time; s = socket.create_connection(('127.0.0.1', {port})); time.sleep(100)",
               holder)
    conn, _ = srv.accept()
    criu = Criu(criu_binary)
    opts = DumpOptions(pid=p.pid, images_dir=images, leave_running=True, tcp_established=True)
    if criu_dumps_tcp(criu.version()):
        criu.dump(opts)
        assert any(images.glob("tcp-stream-*.img")), "the established connection is not in the images"
    else:
        with pytest.raises(CriuError, match=r"install CRIU >= 4\.2"):
            criu.dump(opts)
    assert state(p.pid) in "RSD"
    conn.send(b"x")  # the connection survived the (failed or left-running) dump
    conn.close()
    srv.close()
