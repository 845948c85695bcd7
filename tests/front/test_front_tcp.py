"""TCP through the standard commands and gpucr's CRIU front: a managed CRI container (host network, annotated
``gpucr.io/tcp-established: "true"``) serves on a listening socket and talks to itself over an established loopback
connection; ``ctr c checkpoint --task`` while it runs, the container killed, ``ctr c restore``: the established
connection answers again with the count its server shell had, and the listening socket accepts new connections.
Both ends of that connection are in the container, because ``ctr c checkpoint`` leaves the container running and
killing it then closes every socket it has (a peer outside would see the connection end).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu import Criu
from nri_plugin.cri import CriClient
from tests.ckpt._tcp import criu_dumps_tcp, kernel_version
from tests.front.conftest import REAL_CRIU, FrontRoute
from tests.front.test_gpufront import _task_pid, fake, gpu_front, node, plugin  # noqa: F401 (fixtures)
from tests.testenv import Containerd, wait_for

pytestmark = pytest.mark.integration

#: every line L on a connection is answered "<n> L", n counting that connection's lines (one shell per connection)
ANSWER = 'n=0; while read l; do n=$((n+1)); echo "$n $l"; done'
#: the server, and a client in the same container sending "ping" every 0.2 s over one connection, its answers
#: appended to /data/log (it reconnects if the connection ends, which restarts the count at 1)
SERVER_AND_CLIENT = (f"nc -ll -p $PORT -e sh -c '{ANSWER}' & "
                     "until (while true; do echo ping; sleep 0.2; done) | nc 127.0.0.1 $PORT >> /data/log; "
                     "do sleep 0.1; done")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int, line: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(line.encode() + b"\n")
        answer = s.makefile("rb").readline()
    assert answer.endswith(b"\n"), f"port {port} closed the connection (read {answer!r})"
    return answer.decode().rstrip("\n")


def counts(data: Path) -> list[int]:
    lines = (data / "log").read_text().splitlines() if (data / "log").exists() else []
    return [int(ln.split()[0]) for ln in lines if ln.endswith(" ping")]


@contextlib.contextmanager
def tcp_pod(ctrd: Containerd, tmp_path: Path, port: int) -> Iterator[tuple[CriClient, str]]:
    data = tmp_path / "data"
    data.mkdir()
    ann = {"gpucr.io/checkpoint": "enabled", "gpucr.io/tcp-established": "true"}
    with ctrd.pod(annotations=ann) as (c, pod_id, cfg):
        cid = ctrd.run_container(c, pod_id, cfg, "tcp", ["/bin/sh", "-c", SERVER_AND_CLIENT],
                                 env={"PORT": str(port)}, mounts=[(str(data), "/data", False)])
        yield c, cid


def test_managed_container_tcp_connection_answers_after_ctr_restore(
        front_containerd: Containerd, plugin: subprocess.Popen[bytes], gpu_front: FrontRoute,  # noqa: F811
        node: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    version = Criu(str(REAL_CRIU)).version()
    assert criu_dumps_tcp(version), (f"{REAL_CRIU} is CRIU {version}, which cannot dump TCP sockets on kernel "
                                     f"{kernel_version()}: run install/deps.sh (it installs CRIU 4.2.x)")
    ctrd = front_containerd
    port = free_port()
    data = tmp_path / "data"
    ref = f"localhost/tcp-{uuid.uuid4().hex[:6]}:ckpt"
    restored = f"tcp-restored-{uuid.uuid4().hex[:6]}"
    with tcp_pod(ctrd, tmp_path, port) as (c, cid):
        record = json.loads((node["state"] / "containers" / f"{cid}.json").read_text())
        assert record["managed"] and "tcp-established" in Path(record["criu_config"]).read_text().split(), record
        wait_for(lambda: len(counts(data)) >= 3, what="the in-container client's answers")
        assert ask(port, "hello") == "1 hello"
        mark = gpu_front.log_mark()
        before = counts(data)[-1]
        ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", cid, ref, namespace="k8s.io")
        assert "DUMP success=True" in gpu_front.log_since(mark)
        at_ckpt = counts(data)[-1]
        c.stop_container(cid, 0)
        at_kill = counts(data)
        assert at_kill == list(range(1, len(at_kill) + 1)), at_kill  # one connection all along
        wait_for(lambda: not _listening(port), what=f"port {port} to be released by the killed container")
        mark = gpu_front.log_mark()
        try:
            ctrd.ctr("c", "restore", "--live", "--rw", restored, ref, namespace="k8s.io")
            assert "RESTORE from runtime pid" in gpu_front.log_since(mark)  # through the front
            wait_for(lambda: len(counts(data)) >= len(at_kill) + 3, what="answers over the restored connection")
            after = counts(data)[len(at_kill):]
            # the restored connection: its server shell's count goes on from the checkpoint (a new connection would
            # start again at 1); the answers between checkpoint and kill are lost with the killed container
            assert after[0] > 1 and after == list(range(after[0], after[0] + len(after))), (at_kill, after)
            assert before < after[0] <= at_ckpt + 1, (before, at_ckpt, after)
            assert ask(port, "again") == "1 again"  # the restored listening socket accepts
            assert _task_pid(ctrd, restored, "k8s.io") > 0
        finally:
            ctrd.remove_restored(restored, ref, namespace="k8s.io")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # only a listener blocks the bind, not TIME_WAIT
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
