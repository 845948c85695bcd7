"""The client's error for a failed request, from CRIU's real log lines (no CRIU run): CRIU 4.1 on a kernel >= 6.16
meeting a TCP socket gets a line that says why and what to do, even when the cause is far above the log's tail."""

from __future__ import annotations

import tempfile
from pathlib import Path

from nri_plugin.ckpt.criu import Criu, CriuError

# dump.log of CRIU 4.1.1 on kernel 6.18 for a process with an established TCP connection (abridged)
LOG_41_TCP = """\
(00.048815) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.061879) sockets: Searching for socket 0x21ecc family 2
(00.061891) Error (criu/sockets.c:628): sockets: Can't get 1:16 opt: Operation not supported
(00.061894) Error (criu/sockets.c:628): sockets: Can't get 1:34 opt: Operation not supported
(00.061916) Error (criu/cr-dump.c:1681): Dump files (pid: 3793) failed with -1
""" + "".join(f"(00.07{i:04d}) \\tUnseizing {4000 + i} into 1\n" for i in range(40)) + """\
(00.076275) Error (criu/cr-dump.c:2111): Dumping FAILED.
"""


def _error(log: str, tmp_path: Path) -> str:
    (tmp_path / "dump.log").write_text(log)
    first = "rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted"
    with tempfile.TemporaryFile() as stderr:
        err = Criu._with_logs(CriuError(f"criu failed the dump of pid 3793: {first}", criu_errmsg=first), 1, stderr,
                              tmp_path, "dump.log")
    return str(err).splitlines()[0]


def test_criu41_tcp_on_new_kernel_says_why_and_what_to_do(tmp_path: Path) -> None:
    line = _error(LOG_41_TCP, tmp_path)
    assert "Dump files (pid: 3793) failed with -1" in line  # the cause, not CRIU's first (harmless) error
    assert "cannot dump TCP/UDP sockets on kernels >= 6.16" in line and "install CRIU >= 4.2" in line


def test_other_failures_get_no_tcp_hint(tmp_path: Path) -> None:
    line = _error(LOG_41_TCP.replace("Can't get 1:16 opt", "Can't get 1:99 opt"), tmp_path)
    assert "failed with -1" in line and "TCP" not in line
