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


#: a workload snippet: load the fake (so discovery sees it mapped), register, then loop on fakeCudaWait()
WORKLOAD = r'''
import ctypes, os, sys, time, threading
lib = ctypes.CDLL(os.environ["GPUCR_LIBCUDA"])
lib.fakeCudaRegister(ctypes.c_ulonglong(int(sys.argv[2])), 0)
out = sys.argv[1]
n = 0
while True:
    lib.fakeCudaWait()          # blocks while locked/checkpointed, like a CUDA call would
    n += 1
    with open(out, "a") as f:
        f.write(f"{n}\n")
    time.sleep(0.1)
'''


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
