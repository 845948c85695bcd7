"""Build the fake CUDA driver (``fake_cuda.c``) with gcc, and helpers to drive it from tests.

gpucr finds the fake only through configuration (``GPUCR_LIBCUDA`` / ``GPUCR_LIBNVML`` for the CLI, ``Driver(path)``
in-process); the state lives in ``FAKE_CUDA_DIR`` (one file per pid), so the CLI subprocess, the workload and the
test agree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).with_name("fake_cuda.c")
STATES = {0: "RUNNING", 1: "LOCKED", 2: "CHECKPOINTED", 3: "FAILED"}


def build(out_dir: Path) -> Path:
    """Compile the fake into ``out_dir/libfakecuda.so``; raise (never skip) when gcc is missing or fails."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fake CUDA driver (apt-get install gcc)")
    out = out_dir / "libfakecuda.so"
    r = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(out), str(SRC)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the fake CUDA driver failed:\n{r.stderr}")
    return out


@dataclass
class FakeCuda:
    """A built fake plus its state dir; ``env`` configures a gpucr subprocess (and a workload) to use it."""

    lib: Path
    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {"GPUCR_LIBCUDA": str(self.lib), "GPUCR_LIBNVML": str(self.lib), "FAKE_CUDA_DIR": str(self.state_dir)}

    def apply(self) -> None:
        os.environ.update(self.env)

    def state(self, pid: int) -> str | None:
        """The fake's state name for ``pid``, or None when it holds no CUDA state."""
        try:
            fields = dict(kv.split("=", 1) for kv in (self.state_dir / str(pid)).read_text().split())
        except FileNotFoundError:
            return None
        return STATES[int(fields["state"])]

    def fail(self, step: str, code: int = 999, once: bool = False) -> None:
        (self.state_dir / f"fail-{step}").write_text(f"{code}{' once' if once else ''}\n")

    def clear_failures(self) -> None:
        for f in self.state_dir.glob("fail-*"):
            f.unlink()


#: a workload: N processes (argv[3]), each loads the fake (so discovery sees it mapped), registers its CUDA state and
#: loops on fakeCudaWait() -- which blocks while the process is locked or checkpointed, as a CUDA call would -- writing
#: its counter to OUT.<i>; a helper thread in each process keeps a second counter (multi-threaded)
WORKLOAD = r'''
import ctypes, os, sys, time, threading
out, nbytes, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
idx = 0
for i in range(1, nproc):
    if os.fork() == 0:
        idx = i
        break
lib = ctypes.CDLL(os.environ["GPUCR_LIBCUDA"])
lib.fakeCudaRegister(ctypes.c_ulonglong(nbytes), 0)
def count(name):
    n = 0
    while True:
        lib.fakeCudaWait()
        n += 1
        tmp = f"{out}.{name}.tmp"
        with open(tmp, "w") as f:
            f.write(str(n))
        os.replace(tmp, f"{out}.{name}")
        time.sleep(0.05)
threading.Thread(target=count, args=(f"{idx}t",), daemon=True).start()
count(str(idx))
'''


class FakeWorkload:
    """A running fake-CUDA workload tree; ``pids`` are its processes (root first)."""

    def __init__(self, fc: FakeCuda, tmp: Path, nproc: int = 1, gpu_bytes: int = 1 << 30) -> None:
        import subprocess
        import sys

        from tests.testenv import wait_for

        self.fc, self.nproc = fc, nproc
        self.base = tmp / "fakecount"
        self.log = open(tmp / "fakeworkload.out", "wb")
        self.proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(self.base), str(gpu_bytes), str(nproc)],
                                     env={**os.environ, **fc.env}, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp)
        self.root = self.proc.pid
        wait_for(lambda: len(self.counters()) == 2 * nproc, what="fake CUDA workload counters")
        kids = Path(f"/proc/{self.root}/task/{self.root}/children").read_text().split()
        self.pids = [self.root, *map(int, kids)]
        assert len(self.pids) == nproc, self.pids

    def counters(self) -> dict[str, int]:
        out = {}
        for p in self.base.parent.glob(self.base.name + ".*"):
            if not p.name.endswith(".tmp"):
                try:
                    out[p.name.rsplit(".", 1)[1]] = int(p.read_text() or 0)
                except (OSError, ValueError):
                    pass
        return out

    def advancing(self, timeout: float = 10.0) -> dict[str, int]:
        from tests.testenv import wait_for

        before = self.counters()
        wait_for(lambda: len(before) == 2 * self.nproc and all(
            v > before[n] for n, v in self.counters().items()), timeout=timeout,
            what=f"every counter of the fake CUDA workload (root {self.root}) to advance")
        return self.counters()

    def kill(self) -> None:
        import signal

        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except Exception:
            pass
        self.log.close()


# -- pytest fixtures (import them into a test module: ``from tests.fakes.cuda import fake_cuda, fake_cuda_lib``) --
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fake_cuda_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fakecuda"))


@pytest.fixture
def fake_cuda(fake_cuda_lib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
    state = tmp_path / "fake-cuda-state"
    state.mkdir()
    fc = FakeCuda(fake_cuda_lib, state)
    for k, v in fc.env.items():
        monkeypatch.setenv(k, v)
    return fc
