"""The bench's GPU workload and its protocol, shared by bench/gpu_cr.py, gpu_faults.py, gpu_multi.py, gpu_restore.py
and demo/gpu_pod.py: a PyTorch process holding ``GIB`` GiB of ``torch.rand`` data on the GPU while a small training
loop runs, talking through files in its dir ``D`` (``python3 -c WORKLOAD D GIB``):

- ``ready``: JSON ``{"pid", "digest"}`` once the data is on the GPU (the digest of the data at start);
- ``step``: ``"STEP LOSS"`` after every training step (``STEP LOSS TIME`` with ``step_time``);
- ``verify-TAG`` (created by the bench) is answered by ``digest-TAG``: the data's digest now, to compare with the
  one at start.

The digest is sampled (sums and the first 4096 words of each 1 GiB tensor: cheap at 32 GiB) or, with
``full_digest``, the sha256 of every byte (through one pinned buffer; ``ready`` then also says ``digest_s``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["WORKLOAD", "ask_digest", "step", "wait_gone", "wait_ready", "wait_steps", "workload"]

_HEAD = r'''
import hashlib, json, os, sys, time, torch
d, gib = sys.argv[1], float(sys.argv[2])
torch.manual_seed(1234)
n = int(gib * (1 << 30)) // 4
'''

_SAMPLED = r'''chunk = 1 << 28
data = [torch.rand(min(chunk, n - i), device="cuda") for i in range(0, n, chunk)]

def digest():
    h = hashlib.sha256()
    for t in data:
        v = t.view(torch.int32)
        h.update(str(int(v.sum(dtype=torch.int64))).encode())
        h.update(str(int((v[::7] ^ 0x5A5A5A5A).sum(dtype=torch.int64))).encode())
        h.update(v[:4096].cpu().numpy().tobytes())
    return h.hexdigest()
'''

_FULL = r'''chunk = 1 << 26
data = [torch.rand(min(chunk, n - i), device="cuda") for i in range(0, n, chunk)]
buf = torch.empty(chunk, dtype=torch.float32, pin_memory=True)

def digest():
    """sha256 of every byte of the GPU data (copied chunk by chunk through one pinned buffer)."""
    h = hashlib.sha256()
    for t in data:
        b = buf[: t.numel()]
        b.copy_(t)
        h.update(b.numpy().tobytes())
    return h.hexdigest()
'''

_MODEL = r'''
def put(name, text):
    tmp = os.path.join(d, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(d, name))

model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).cuda()
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
xb = torch.randn(256, 1024, device="cuda")
yb = torch.randn(256, 1024, device="cuda")
torch.cuda.synchronize()
'''

_READY_SAMPLED = '''put("ready", json.dumps({"pid": os.getpid(), "digest": digest()}))
'''

_READY_FULL = '''t0 = time.monotonic()
dg = digest()
put("ready", json.dumps({"pid": os.getpid(), "digest": dg, "digest_s": time.monotonic() - t0}))
'''

_LOOP = r'''step = 0
while True:
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(xb), yb)
    loss.backward()
    opt.step()
    step += 1
    lv = float(loss)  # synchronizes: keeps the GPU queue shallow so a lock drains fast
    put("step", STEP_LINE)
    for name in os.listdir(d):
        if name.startswith("verify-"):
            os.unlink(os.path.join(d, name))
            put("digest-" + name[7:], digest())
    time.sleep(0.01)
'''


def workload(*, full_digest: bool = False, step_time: bool = False) -> str:
    """The workload's script: sampled or ``full_digest``; the step line with the wall time with ``step_time``."""
    line = 'f"{step} {lv:.9g} {time.time():.3f}"' if step_time else 'f"{step} {lv:.9g}"'
    return (_HEAD + (_FULL if full_digest else _SAMPLED) + _MODEL + (_READY_FULL if full_digest else _READY_SAMPLED)
            + _LOOP.replace("STEP_LINE", line))


#: the sampled-digest workload (gpu_cr, gpu_multi, gpu_restore, demo/gpu_pod)
WORKLOAD = workload()


def _tail(d: Path, n: int) -> str:
    try:
        return (d / "log").read_text()[-n:]
    except OSError:
        return ""


def wait_ready(d: Path, proc: subprocess.Popen[Any], timeout: float = 300) -> dict[str, Any]:
    """The workload's ``ready`` record, once written. Raises RuntimeError (its log's tail) if it exits first."""
    deadline = time.monotonic() + timeout
    while not (d / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"workload failed: {_tail(d, 3000)}")
        time.sleep(0.1)
    ready: dict[str, Any] = json.loads((d / "ready").read_text())
    return ready


def step(d: Path) -> int:
    """The last training step the workload in ``d`` reported (0 before the first)."""
    try:
        return int((d / "step").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def wait_steps(d: Path, n: int, timeout: float = 120, proc: subprocess.Popen[Any] | None = None,
               poll: float = 0.02) -> int:
    """Wait until training has advanced ``n`` steps; returns the step. Raises RuntimeError after ``timeout`` (or
    once ``proc`` exited)."""
    s0 = step(d)
    deadline = time.monotonic() + timeout
    while step(d) < s0 + n:
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"training in {d} did not advance ({s0} -> {step(d)}): {_tail(d, 2000)}")
        time.sleep(poll)
    return step(d)


def ask_digest(d: Path, tag: str, timeout: float = 300, proc: subprocess.Popen[Any] | None = None) -> str | None:
    """The workload's digest of its data now (``verify-TAG`` -> ``digest-TAG``); None if none came in ``timeout``
    (or ``proc`` exited)."""
    (d / f"verify-{tag}").write_text("")
    out = d / f"digest-{tag}"
    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            return None
        time.sleep(0.05)
    return out.read_text()


def wait_gone(pid: int, timeout: float = 60, poll: float = 0.02) -> None:
    """Wait until ``pid`` no longer exists (reaped if it is our child). Raises RuntimeError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"pid {pid} still exists after the dump")
        time.sleep(poll)
