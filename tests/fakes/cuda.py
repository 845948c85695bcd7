"""Build the fake CUDA driver (``fake_cuda.c``, and ``fake_cuda_app.c`` for containers) with gcc, and helpers to
drive it from tests.

gpucr finds the fake only through configuration (``GPUCR_LIBCUDA`` / ``GPUCR_LIBNVML`` for the CLI, ``Driver(path)``
in-process). A registered process maps a block device node (``FAKE_CUDA_DEVICE``, made by :func:`make_device`) while
it is RUNNING or LOCKED, which CRIU refuses to dump as it refuses /dev/nvidia* mappings; its state lives in its own
memory and is mirrored in its mailbox (a file of ``FAKE_CUDA_DIR`` it maps), which :meth:`FakeCuda.state` reads.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).with_name("fake_cuda.c")
APP_SRC = Path(__file__).with_name("fake_cuda_app.c")
STATES = {0: "RUNNING", 1: "LOCKED", 2: "CHECKPOINTED", 3: "FAILED"}
MB_MAGIC = 0x46434D42
#: the mailbox mirror: magic, state, busy, mapped, bytes, owner pid namespace, GPU UUID (fake_cuda.c's mbox_t)
_MIRROR = struct.Struct("<IIIIQQ64s")


def _gcc() -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fake CUDA driver (apt-get install gcc)")
    return gcc


def build(out_dir: Path) -> Path:
    """Compile the fake into ``out_dir/libfakecuda.so`` and the static container workload ``out_dir/fakecuda-app``;
    raise (never skip) when gcc or the static libc (libc6-dev) is missing or the build fails."""
    out = out_dir / "libfakecuda.so"
    for cmd in ([_gcc(), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out), str(SRC)],
                [_gcc(), "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-pthread", "-DFAKE_CUSTOM_STORAGE", "-o",
                 str(custom_storage_of(out)), str(SRC)],
                [_gcc(), "-static", "-O2", "-Wall", "-Werror", "-pthread", "-o", str(out_dir / "fakecuda-app"),
                 str(APP_SRC), str(SRC)]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"building the fake CUDA driver failed ({' '.join(cmd)}):\n{r.stderr}")
    return out


def custom_storage_of(lib: Path) -> Path:
    """The variant built beside ``lib`` that exports cuCheckpointOperationComplete (CUDA 13.4's CustomStorage)."""
    return lib.with_name("libfakecuda-cs.so")


def app_of(lib: Path) -> Path:
    """The static container workload built beside ``lib``."""
    return lib.with_name("fakecuda-app")


def make_device(path: Path) -> Path:
    """A block device node at ``path`` (the first loop device's numbers) for a fake GPU: mappable, and refused by
    CRIU ("Can't handle non-regular mapping") like /dev/nvidia*. /dev/zero would not do: CRIU dumps its mappings.
    Nothing reads or writes the device; raise when there is no loop device or no right to mknod."""
    devs = sorted(Path("/sys/block").glob("loop*/dev"))
    if not devs:  # the loop module loads, and makes a free device, on demand
        subprocess.run(["losetup", "-f"], capture_output=True)
        devs = sorted(Path("/sys/block").glob("loop*/dev"))
    if not devs:
        raise RuntimeError("the fake CUDA driver needs a loop block device (modprobe loop)")
    major, minor = (int(x) for x in devs[0].read_text().split(":"))
    path.unlink(missing_ok=True)
    os.mknod(path, 0o600 | 0o060000, os.makedev(major, minor))  # S_IFBLK
    return path


def _mailbox(pid: int) -> Path | None:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        name = line.rsplit("/", 1)[-1] if "/" in line else ""
        if name.startswith("mb-") and " " not in name:
            return Path(name)
    return None


#: the driver calls a checkpoint and its restore make for each CUDA process, in order
STEPS = ("lock", "checkpoint", "restore", "unlock")


@dataclass
class FakeCuda:
    """A built fake, its state dir and device node; ``env`` configures a gpucr subprocess (and a workload)."""

    lib: Path
    state_dir: Path
    device: Path

    @property
    def app(self) -> Path:
        return app_of(self.lib)

    @property
    def host_node(self) -> Path:
        """The host's own node of the device (under /dev) that :attr:`device` names."""
        rdev = os.stat(self.device).st_rdev
        for p in Path("/dev").glob("loop*"):
            if p.is_block_device() and p.stat().st_rdev == rdev:
                return p
        raise RuntimeError(f"no /dev node for the fake GPU device {self.device}")

    @property
    def env(self) -> dict[str, str]:
        return {"GPUCR_LIBCUDA": str(self.lib), "GPUCR_LIBNVML": str(self.lib), "FAKE_CUDA_DIR": str(self.state_dir),
                "FAKE_CUDA_DEVICE": str(self.device)}

    def apply(self) -> None:
        os.environ.update(self.env)

    def mirror(self, pid: int) -> dict[str, object] | None:
        """What ``pid``'s driver thread last published (state, busy, mapped, bytes, gpu), or None when it holds no
        CUDA state. Never waits on the process (a frozen one included), as NVML does not."""
        name = _mailbox(pid)
        if name is None:
            return None
        try:
            raw = (self.state_dir / name).read_bytes()[:_MIRROR.size]
            ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
        except OSError:
            return None
        magic, state, busy, mapped, nbytes, owner, gpu = _MIRROR.unpack(raw)
        if magic != MB_MAGIC or owner != ns:
            return None
        return {"state": STATES[state], "busy": busy, "mapped": bool(mapped), "bytes": nbytes,
                "gpu": gpu.split(b"\0", 1)[0].decode()}

    def state(self, pid: int) -> str | None:
        """The fake's state name for ``pid``, or None when it holds no CUDA state."""
        m = self.mirror(pid)
        return None if m is None else str(m["state"])

    def gpu(self, pid: int) -> str | None:
        m = self.mirror(pid)
        return None if m is None else str(m["gpu"])

    def maps_device(self, pid: int, path: str | None = None) -> bool:
        """Whether ``pid`` maps the fake GPU device (what CRIU refuses to dump), seen at ``path`` in its mount
        namespace (default: the host node; a container sees it where its spec put it, e.g. /dev/nvidia0)."""
        want = f" {path or self.device}"
        try:
            return any(line.endswith(want) for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
        except OSError:
            return False

    def fail(self, step: str, code: int = 999, once: bool = False) -> None:
        (self.state_dir / f"fail-{step}").write_text(f"{code}{' once' if once else ''}\n")

    def clear_failures(self) -> None:
        for f in self.state_dir.glob("fail-*"):
            f.unlink()

    # -- the timing hooks ----------------------------------------------------------------------------------------
    def delay(self, step: str, ms: int) -> None:
        """Each call of ``step`` (lock, checkpoint, restore, unlock) takes ``ms`` longer, as a GPU copy would."""
        (self.state_dir / f"delay-{step}").write_text(f"{ms}\n")

    def start_trace(self) -> None:
        """From now on, every lock/checkpoint/restore/unlock call is recorded (see :meth:`calls`)."""
        (self.state_dir / "trace").write_text("")

    def trace_steps_slowed(self, ms: int = 300) -> None:
        """Each of :data:`STEPS` slowed by ``ms`` (:meth:`delay`) and traced from now on (:meth:`start_trace`): a
        step's calls overlap only when the caller makes them concurrently."""
        for step in STEPS:
            self.delay(step, ms)
        self.start_trace()

    def assert_steps_at_once(self, pids: Sequence[int], node_mode: str) -> None:
        """Each of :data:`STEPS` was called for exactly ``pids``, all at once (:func:`overlap`); the copies
        (checkpoint, restore) with THP ``always``, the lock and unlock in the node's ``node_mode``."""
        for step in STEPS:
            calls = self.calls(step)
            assert sorted(c.pid for c in calls) == sorted(pids), (step, calls)
            assert overlap(calls), f"the {step} calls did not run at once: {calls}"
        assert {c.thp for c in self.calls("checkpoint") + self.calls("restore")} == {"always"}
        assert {c.thp for c in self.calls("lock") + self.calls("unlock")} == {node_mode}

    def calls(self, step: str | None = None) -> list[TracedCall]:
        """The traced calls (of ``step``), in the order they ended."""
        out = []
        for line in (self.state_dir / "trace").read_text().splitlines():
            name, pid, t0, t1, thp, rc = line.split()
            if step is None or name == step:
                out.append(TracedCall(name, int(pid), int(t0), int(t1), thp, int(rc)))
        return out


@dataclass(frozen=True)
class TracedCall:
    """One driver call as the fake's trace saw it (microseconds, CLOCK_MONOTONIC; the THP mode at its start)."""

    step: str
    pid: int
    start_us: int
    end_us: int
    thp: str
    result: int = 0


def overlap(calls: list[TracedCall]) -> bool:
    """Whether all ``calls`` ran at once at some instant (the latest start precedes the earliest end)."""
    return bool(calls) and max(c.start_us for c in calls) < min(c.end_us for c in calls)


#: a workload: N processes (argv[3]), each loads the fake (so discovery sees it mapped), registers its CUDA state and
#: counts, each tick one unit of GPU work (fakeCudaBegin/End: it waits while the process is locked or checkpointed,
#: as a CUDA call would), writing its counter to OUT.<i>; a helper thread in each process keeps a second counter
WORKLOAD = r'''
import ctypes, os, sys, time, threading
out, nbytes, nproc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
idx = 0
for i in range(1, nproc):
    if os.fork() == 0:
        idx = i
        break
lib = ctypes.CDLL(os.environ["GPUCR_LIBCUDA"], use_errno=True)
if lib.fakeCudaRegister(ctypes.c_ulonglong(nbytes), 0) != 0:
    sys.exit(f"fakeCudaRegister failed: {os.strerror(ctypes.get_errno())}")
def count(name):
    n = 0
    while True:
        lib.fakeCudaBegin()
        n += 1
        tmp = f"{out}.{name}.tmp"
        with open(tmp, "w") as f:
            f.write(str(n))
        os.replace(tmp, f"{out}.{name}")
        lib.fakeCudaEnd()
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
    fc = FakeCuda(fake_cuda_lib, state, make_device(tmp_path / "fake-nvidia0"))
    for k, v in fc.env.items():
        monkeypatch.setenv(k, v)
    return fc
