#!/usr/bin/env python3
"""Long fuzz run (not a CI test): random and mutated inputs to gpucr's wire decoders, crashes and hangs recorded.

Targets, each fed the same share of ``--count`` inputs:

* ``ttrpc``: :class:`nri_plugin.ttrpc.FrameDecoder`, the input fed whole and again in random pieces; the two must agree
  (same frames, same error). Allowed error: ``FrameError``.
* ``mux``: :class:`nri_plugin.mux.MuxDecoder`, whole and in pieces, its conn 1/2 payloads then fed to a ttrpc
  ``FrameDecoder`` each (as ``Mux`` and ``Channel`` do). Allowed: ``MuxFrameError``, ``FrameError``.
* ``nri``: what the stub does with a request frame: gpucr's ttrpc :class:`~nri_plugin.ttrpc.Server` (over an in-memory
  stream) decodes the ttrpc ``Request``, dispatches to the :class:`~nri_plugin.nri.Stub`'s handler, which decodes the
  NRI request and runs gpucr's real :class:`~nri_plugin.handlers.nri_policy.PolicyPlugin` on it (its state and CRIU
  config dirs in a root-only dir under /run; the node config is put back after every input). Exactly one well-formed
  ``Response`` must come back; a handler error must be a :class:`~nri_plugin.errors.GpucrError` (the stub turns
  anything else into UNKNOWN and logs a traceback, which is caught here as a crash).
* ``front``: the CRIU front's wire codec (``front/_wire.py``, ``front/messages.py``) as the relay uses it:
  ``decode_request`` then, when it succeeds, ``rewrite_request`` of its fds (and pid) and a re-decode that must show
  the new fds; ``decode_response`` then, when it succeeds, ``explain_failure`` and a re-decode that must fail
  (success false, gpucr's message first). Allowed: ``MessageError`` from the decoders.

Inputs: about 10% random bytes, the rest valid encodings (seeds) put through 1-4 mutations: bit flips, byte sets,
inserts, deletions, truncation, splices of two seeds, chunk duplication, a big-endian u32 length field set to an edge
value (0, len +- 1, 4 MiB +- 1, 16 MiB +- 1, 2^31, 2^32-1) at a frame-header offset, and for protobuf a varint set to an
edge value (oversized lengths). Input ``i`` of a target is a pure function of (``--seed``, target, i), so any recorded
input can be regenerated.

Outcome per input: ok, a typed error (the module's own), a crash (any other exception or a broken invariant: the
input is recorded, hex) or a hang (an input taking more than ``--hang-s`` seconds, wall clock; re-run alone three
times before it is recorded, so a run descheduled by other load is not reported as a hang unless it repeats). A
watchdog in the parent kills a worker stuck in one input for 60 s (a loop in C code a signal cannot stop) and records
that input as a hang. Writes ``OUT_DIR/summary.json``, ``crashes.jsonl``, ``hangs.jsonl`` and prints a Markdown
summary. Two worker processes at most (``--workers``).

Run from the repository root: ``.venv/bin/python bench/fuzz.py /tmp/fuzz-out --count 1000000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_plugin.errors import GpucrError  # noqa: E402
from nri_plugin.front import _wire, messages  # noqa: E402
from nri_plugin.mux import MuxDecoder, MuxFrameError  # noqa: E402
from nri_plugin.mux import message_frames as mux_message_frames  # noqa: E402
from nri_plugin.ttrpc import FrameDecoder, FrameError, MessageType, OversizedFrame  # noqa: E402
from nri_plugin.ttrpc import encode_frame as ttrpc_frame  # noqa: E402

TARGETS = ("ttrpc", "mux", "nri", "front")
U32_EDGES = (0, 1, 2, 3, 7, 8, 9, 10, 4095, 4096, 4097, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, (16 << 20) - 1,
             16 << 20, (16 << 20) + 1, 1 << 31, (1 << 32) - 1)
VARINT_EDGES = (0, 1, 127, 128, 255, 1 << 14, (1 << 29) - 1, 1 << 29, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
                (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
WATCHDOG_S = 60.0
TASK_INPUTS = 5000
MAX_RECORDED = 50


class Crash(Exception):
    """A broken invariant (not an exception of the decoder itself)."""


class Hang(BaseException):
    """Raised by the CPU-time alarm inside an input that runs away."""


# -- seeds ----------------------------------------------------------------------------------------------------------

def _nri_requests() -> list[tuple[str, bytes]]:
    """(method, NRI request bytes) for every RPC the stub serves, with realistic content."""
    from nri_plugin.nri.api import pb

    pod = pb.PodSandbox(id="p" * 64, name="web", uid="uid-1", namespace="default",
                        annotations={"gpucr.io/checkpoint": "enabled", "gpucr.io/file-locks": "true",
                                     "gpucr.io/criu-timeout": "30", "gpucr.io/gpu-map": "GPU-a=GPU-b"},
                        labels={"app": "web"}, runtime_handler="runc", pid=1234)
    ctr = pb.Container(id="c" * 64, pod_sandbox_id="p" * 64, name="main", state=pb.CONTAINER_CREATED,
                       annotations={"gpucr.io/tcp-established": "true", "org.criu.config": "/etc/criu/x.conf"},
                       args=["/bin/sh", "-c", "sleep 1"], env=["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=0"],
                       mounts=[pb.Mount(destination="/data", type="bind", source="/srv", options=["rbind", "ro"])])
    ctr.linux.devices.add(path="/dev/nvidia0", type="c", major=195, minor=0)
    ctr.linux.resources.cpu.shares.value = 1024
    ctr.linux.resources.memory.limit.value = 1 << 30
    res = pb.LinuxResources()
    res.cpu.shares.value = 2
    plain = pb.Container(id="d" * 64, pod_sandbox_id="p" * 64, name="side")
    out: list[tuple[str, Any]] = [
        ("Configure", pb.ConfigureRequest(config='annotation_errors = "warn"\nmanage_gpu_containers = true\n',
                                          runtime_name="containerd", runtime_version="2.1.9",
                                          registration_timeout=5000, request_timeout=2000, NRI_version="v0.9.0")),
        ("Configure", pb.ConfigureRequest(runtime_name="containerd", runtime_version="1.7.24")),
        ("Synchronize", pb.SynchronizeRequest(pods=[pod], containers=[ctr, plain], more=False)),
        ("Synchronize", pb.SynchronizeRequest(pods=[pod], more=True)),
        ("CreateContainer", pb.CreateContainerRequest(pod=pod, container=ctr)),
        ("CreateContainer", pb.CreateContainerRequest(pod=pod, container=plain)),
        ("UpdateContainer", pb.UpdateContainerRequest(pod=pod, container=ctr, linux_resources=res)),
        ("StopContainer", pb.StopContainerRequest(pod=pod, container=ctr)),
        ("RemoveContainer", pb.RemoveContainerRequest(pod=pod, container=ctr)),
        ("StateChange", pb.StateChangeEvent(event=pb.REMOVE_CONTAINER, pod=pod, container=ctr)),
        ("StateChange", pb.StateChangeEvent(event=pb.RUN_POD_SANDBOX, pod=pod)),
        ("Shutdown", pb.Empty()),
    ]
    return [(m, msg.SerializeToString(deterministic=True)) for m, msg in out]


def _ttrpc_request(method: str, payload: bytes, service: str = "nri.pkg.api.v1alpha1.Plugin") -> bytes:
    from nri_plugin.ttrpc._pb import ttrpc_pb2

    req = ttrpc_pb2.Request(service=service, method=method, payload=payload, timeout_nano=2_000_000_000)
    req.metadata.add(key="k", value="v")
    return req.SerializeToString(deterministic=True)


def seeds(target: str) -> list[bytes]:
    nri = [_ttrpc_request(m, p) for m, p in _nri_requests()]
    if target == "nri":
        return nri
    frames = [ttrpc_frame(2 * i + 1, MessageType.REQUEST, p) for i, p in enumerate(nri)]
    frames += [ttrpc_frame(2, MessageType.RESPONSE, b"\x12\x00"), ttrpc_frame(5, MessageType.DATA, b"", 0x05),
               ttrpc_frame(7, MessageType.REQUEST, bytes(range(256)) * 20)]  # 5120 bytes: two mux frames
    if target == "ttrpc":
        over = struct.pack(">IIBB", (4 << 20) + 100, 9, MessageType.REQUEST, 0) + b"\0" * 64
        return frames + [frames[0] + frames[4] + frames[-1], over + frames[1], b""]
    if target == "mux":
        out = [b"".join(mux_message_frames(1 + i % 2, f)) for i, f in enumerate(frames)]
        return out + [out[0] + out[4] + out[-1]]
    return _front_seeds()


def _front_seeds() -> list[bytes]:
    from nri_plugin.ckpt.criu._pb import rpc_pb2 as r

    opts = r.criu_opts(images_dir_fd=5, pid=4242, leave_running=True, log_file="dump.log", work_dir_fd=6,
                       freeze_cgroup="/sys/fs/cgroup/k8s/pod/ctr", status_fd=7, tcp_established=True,
                       external=["mnt[/etc/hosts]:m0"], manage_cgroups=True)
    out = [
        r.criu_req(type=r.DUMP, opts=opts),
        r.criu_req(type=r.RESTORE, opts=r.criu_opts(images_dir_fd=3, work_dir_fd=4, rst_sibling=True)),
        r.criu_req(type=r.VERSION),
        r.criu_req(type=r.NOTIFY, notify_success=True),
        r.criu_req(type=r.FEATURE_CHECK),
        r.criu_req(type=r.DUMP, opts=r.criu_opts(images_dir_fd=-1, images_dir="/x")),
        r.criu_resp(type=r.DUMP, success=True),
        r.criu_resp(type=r.NOTIFY, success=True, notify=r.criu_notify(script="pre-dump", pid=77)),
        r.criu_resp(type=r.RESTORE, success=True, restore=r.criu_restore_resp(pid=99)),
        r.criu_resp(type=r.VERSION, success=True, version=r.criu_version(major_number=4, minor_number=2, gitid="x")),
        r.criu_resp(type=r.DUMP, success=False, cr_errno=5, cr_errmsg="Can't handle non-regular mapping"),
    ]
    return [m.SerializeToString(deterministic=True) for m in out]


# -- mutation -------------------------------------------------------------------------------------------------------

def _frame_offsets(data: bytes, header: int, length_at: int) -> list[int]:
    """Offsets of the length fields of a well-formed frame stream (ttrpc: header 10, length at 0; mux: 8, 4)."""
    offs, pos = [], 0
    while pos + header <= len(data):
        offs.append(pos + length_at)
        (n,) = struct.unpack_from(">I", data, pos + length_at)
        pos += header + n
    return offs


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], target: str) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(10)
        n = len(b)
        if op == 0 and n:  # bit flips
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(n)
                b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # byte sets
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(n)] = rng.choice((0, 0xFF, 0x7F, 0x80, 0x01, rng.randrange(256)))
        elif op == 2:  # insert
            i = rng.randint(0, n)
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.randint(1, 32)]
        elif op == 4 and n:  # truncate
            del b[rng.randrange(n):]
        elif op == 5:  # splice with another seed
            other = rng.choice(corpus)
            b = b[:rng.randint(0, n)] + other[rng.randint(0, len(other)):]
        elif op == 6 and n:  # duplicate a chunk
            i = rng.randrange(n)
            j = rng.randint(0, n)
            b[j:j] = b[i:i + rng.randint(1, 64)]
        elif op == 7 and n >= 4:  # a u32 length field set to an edge value
            if target in ("ttrpc", "mux") and rng.random() < 0.8:
                offs = _frame_offsets(bytes(data), *((10, 0) if target == "ttrpc" else (8, 4)))
                offs = [o for o in offs if o + 4 <= n] or [rng.randrange(n - 3)]
                i = rng.choice(offs)
            else:
                i = rng.randrange(n - 3)
            v = rng.choice(U32_EDGES + (n, n - 1, n + 1, rng.getrandbits(32)))
            b[i:i + 4] = struct.pack(">I", max(0, min(v, (1 << 32) - 1)))
        elif op == 8 and n:  # a varint (protobuf length or value) set to an edge value
            i = rng.randrange(n)
            j = i
            while j < n and b[j] & 0x80:
                j += 1
            b[i:j + 1] = _wire.encode_varint(rng.choice(VARINT_EDGES + (n, n + 1, rng.getrandbits(64))))
        elif op == 9:  # append garbage
            b += rng.randbytes(rng.randint(1, 32))
    return bytes(b)


def make_input(seed: int, target: str, index: int, corpus: list[bytes]) -> tuple[str, bytes]:
    rng = random.Random(f"{seed}/{target}/{index}")
    if rng.random() < 0.1:
        return "random", rng.randbytes(rng.choice((rng.randint(0, 16), rng.randint(0, 512))))
    base = rng.choice(corpus)
    if target == "nri" and rng.random() < 0.67:  # the NRI message inside a well-formed ttrpc Request
        from nri_plugin.ttrpc._pb import ttrpc_pb2

        env = ttrpc_pb2.Request()
        env.ParseFromString(base)
        inner = [s for m, s in _NRI_INNER if m == env.method] or [env.payload]
        if rng.random() < 0.5:  # well-formed protobuf with hostile values: reaches the policy
            return "mutated-fields", _ttrpc_request(env.method, mutate_fields(rng, env.method, rng.choice(inner)))
        return "mutated-inner", _ttrpc_request(env.method, mutate(rng, rng.choice(inner), inner, "protobuf"))
    return "mutated", mutate(rng, base, corpus, target)
_VALUES = ("", "enabled", "disabled", "Enabled", "true", "false", "yes", "off", "0", "1", "30", "86400", "86401",
           "3600000", "3600001", "-1", "1e3", "\u0663", "\u00b2", " enabled ", "GPU-a=GPU-b", "GPU-a=GPU-b,GPU-c=GPU-d",
           "GPU-a=", "=GPU-b", ",,", "all", "none", "void", "0,1", "nvidia.com/gpu=all", "nvidia.com/gpu=0",
           "/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/dri/card0", "../../etc/passwd", "/", "\x00",
           "\u202e", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"), "x" * 5000)
_KEYS = ("gpucr.io/checkpoint", "gpucr.io/tcp-established", "gpucr.io/file-locks", "gpucr.io/ext-unix-sk",
         "gpucr.io/force-irmap", "gpucr.io/criu-timeout", "gpucr.io/lock-timeout", "gpucr.io/gpu-map", "gpucr.io/",
         "gpucr.io/unknown", "GPUCR.IO/checkpoint", "org.criu.config", "io.kubernetes.cri.container-type", "")
_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "PATH", "", "=")
_IDS = ("c" * 64, "", "..", "../x", "a/b", "x" * 300, "ctr-1", "\u00e9t\u00e9", "a\x00b")
_TOML = ('manage_gpu_containers = true', 'annotation_errors = "warn"', 'annotation_errors = "x"',
         'unmanaged_cuda = "ignore"', 'lock_timeout_ms = 0', 'lock_timeout_ms = 1e400', 'state_dir = "relative"',
         'hook_path = ""', 'extra = 1', '[table]', 'x = [1, "a"]', 'driver_call_timeout_s = -1', '= 1', 'a."b" = 1')


def mutate_fields(rng: random.Random, method: str, inner: bytes) -> bytes:
    """The NRI request decoded, a few of its values replaced by hostile ones (annotations, env, devices, ids,
    mounts, the config), encoded again: valid protobuf, so it reaches the stub's handler and the policy."""
    from nri_plugin.nri.api import pb

    cls = {"StateChange": pb.StateChangeEvent, "Shutdown": pb.Empty}.get(method) or getattr(pb, method + "Request")
    msg = cls()
    msg.ParseFromString(inner)
    pod = msg.pod if hasattr(msg, "pod") else None
    ctr = msg.container if hasattr(msg, "container") else None
    if isinstance(msg, pb.SynchronizeRequest):
        pod = msg.pods[0] if msg.pods else msg.pods.add()
        ctr = msg.containers[0] if msg.containers else msg.containers.add()
    for _ in range(rng.randint(1, 5)):
        op = rng.randrange(8)
        if op == 0 and pod is not None:
            pod.annotations[rng.choice(_KEYS)] = rng.choice(_VALUES)
        elif op == 1 and ctr is not None:
            ctr.annotations[rng.choice(_KEYS)] = rng.choice(_VALUES)
        elif op == 2 and ctr is not None:
            ctr.env.append(f"{rng.choice(_ENV)}={rng.choice(_VALUES)}")
        elif op == 3 and ctr is not None:
            ctr.linux.devices.add(path=rng.choice(_VALUES), type=rng.choice(("c", "b", "")))
        elif op == 4 and ctr is not None:
            ctr.mounts.add(destination=rng.choice(_VALUES), source=rng.choice(_VALUES), type="bind")
        elif op == 5 and ctr is not None:
            ctr.CDI_devices.add(name=rng.choice(_VALUES))
        elif op == 6:
            for m in (pod, ctr):
                if m is not None and rng.random() < 0.5:
                    m.id = rng.choice(_IDS)
            if pod is not None:
                pod.namespace, pod.name = rng.choice(_VALUES)[:64], rng.choice(_VALUES)[:64]
        elif op == 7 and isinstance(msg, pb.ConfigureRequest):
            msg.config = "\n".join(rng.choice(_TOML) for _ in range(rng.randint(1, 4)))
    return msg.SerializeToString(deterministic=True)  # map order fixed: input i is reproducible


_NRI_INNER: list[tuple[str, bytes]] = []


# -- the decoders under test ----------------------------------------------------------------------------------------

def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _run_decoder(make: Callable[[], Any], chunks: list[bytes], allowed: tuple[type[BaseException], ...]
                 ) -> tuple[list[Any], str | None]:
    dec = make()
    out: list[Any] = []
    try:
        for c in chunks:
            out.extend(dec.feed(c))
    except allowed as exc:
        return out, type(exc).__name__
    return out, None


def check_ttrpc(data: bytes, rng: random.Random) -> str:
    whole, err = _run_decoder(FrameDecoder, [data], (FrameError,))
    split, err2 = _run_decoder(FrameDecoder, _pieces(rng, data), (FrameError,))
    if err != err2 or (err is None and whole != split) or (err is not None and split[:len(whole)] != whole):
        raise Crash(f"whole vs pieces disagree: {err} {whole[:3]} / {err2} {split[:3]}")
    for f in whole:
        if not isinstance(f, OversizedFrame) and len(f.payload) > 4 << 20:
            raise Crash(f"frame over the limit returned: {len(f.payload)} bytes")
    return err or "ok"


def check_mux(data: bytes, rng: random.Random) -> str:
    whole, err = _run_decoder(MuxDecoder, [data], (MuxFrameError,))
    split, err2 = _run_decoder(MuxDecoder, _pieces(rng, data), (MuxFrameError,))
    if err != err2 or (err is None and whole != split) or (err is not None and split[:len(whole)] != whole):
        raise Crash(f"whole vs pieces disagree: {err} {whole[:3]} / {err2} {split[:3]}")
    conns: dict[int, FrameDecoder] = {1: FrameDecoder(), 2: FrameDecoder()}
    for conn_id, payload in whole:
        dec = conns.get(conn_id)
        if dec is None:
            return "conn-not-open"  # Mux raises MuxFrameError here
        try:
            dec.feed(payload)
        except FrameError:
            return "FrameError"
    return err or "ok"


def check_front(data: bytes, rng: random.Random) -> str:
    outcome = []
    try:
        req = messages.decode_request(data)
    except messages.MessageError:
        outcome.append("req:MessageError")
    else:
        fds = {k: 100 + i for i, k in enumerate(req.fds)}
        pid = 4321 if req.has_opts and req.pid is None else None
        new = messages.rewrite_request(data, fds, pid)  # the relay calls this on every request it accepted
        again = messages.decode_request(new)
        if again.fds != fds or again.type != req.type or (pid is not None and again.pid != pid):
            raise Crash(f"rewrite_request lost its changes: {req!r} -> {again!r} (fds {fds}, pid {pid})")
        outcome.append("req:ok")
    try:
        resp = messages.decode_response(data)
    except messages.MessageError:
        outcome.append("resp:MessageError")
    else:
        failed = messages.decode_response(messages.explain_failure(data, "gpucr: fuzz", 125))
        if failed.success or not (failed.cr_errmsg or "").startswith("gpucr: fuzz") or failed.type != resp.type:
            raise Crash(f"explain_failure did not turn the answer into gpucr's failure: {failed.cr_errmsg!r}")
        outcome.append("resp:ok")
    return " ".join(outcome)


class _MemStream:
    """A ByteStream holding one request frame; EOF only once the server has answered (or given up)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent: list[bytes] = []
        self.answered = asyncio.Event()

    async def read(self) -> bytes:
        if self.data:
            data, self.data = self.data, b""
            return data
        await self.answered.wait()
        return b""

    async def write(self, data: bytes) -> None:
        self.sent.append(data)
        self.answered.set()

    def close(self) -> None:
        pass


class _TracebackTrap(logging.Handler):
    """A log record with a traceback from gpucr's NRI code: the stub or server met an exception it did not expect."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not isinstance(exc, GpucrError):
            self.bad.append(exc)


class NriHarness:
    """gpucr's Server + Stub + PolicyPlugin, one request at a time, on one event loop."""

    def __init__(self, work: Path) -> None:
        from nri_plugin.handlers.nri_policy import PolicyPlugin
        from nri_plugin.nri import Stub
        from nri_plugin.policy import NodeConfig

        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        (work / "runc.conf").write_text("ghost-limit 2M\n")
        self.node = NodeConfig(state_dir=work / "state", criu_config_dir=work / "state" / "criu",
                               runc_criu_config=work / "runc.conf", hook_path="/usr/libexec/gpucr/gpucr-hook")
        self.plugin = PolicyPlugin(self.node)
        self.stub = Stub(self.plugin, name="fuzz", idx="99", socket_path="/nonexistent")
        self.trap = _TracebackTrap()
        root = logging.getLogger("nri_plugin")
        for h in [h for h in root.handlers if isinstance(h, _TracebackTrap)]:
            root.removeHandler(h)  # a harness replaced after a hang
        root.addHandler(self.trap)
        root.setLevel(logging.DEBUG)
        root.propagate = False
        self.loop = asyncio.new_event_loop()
        self.handlers = self.stub._handlers()  # the stub's own table: the one Server gets in Stub._session
        self.n = 0

    def reset(self) -> None:
        self.loop.close()
        self.loop = asyncio.new_event_loop()

    def check(self, data: bytes, rng: random.Random) -> str:
        from nri_plugin.ttrpc import Channel, Code, Server
        from nri_plugin.ttrpc._pb import ttrpc_pb2

        self.n += 1
        if self.n % 2000 == 0:  # records of managed containers pile up: start from an empty state dir again
            shutil.rmtree(self.node.state_dir, ignore_errors=True)
        self.plugin.node = self.node  # a fuzzed Configure may have replaced it: keep every write inside work/
        self.stub.request_timeout_s = 2.0
        self.trap.bad.clear()
        stream = _MemStream(ttrpc_frame(1, MessageType.REQUEST, data))
        server = Server(Channel(stream), self.handlers)
        self.loop.run_until_complete(asyncio.wait_for(server.serve(), 30))
        if self.trap.bad:
            exc = self.trap.bad[0]
            raise Crash(f"the stub/server met {type(exc).__name__}: {exc}") from exc
        if len(stream.sent) != 1:
            raise Crash(f"{len(stream.sent)} responses to one request")
        frames = FrameDecoder().feed(stream.sent[0])
        if len(frames) != 1 or frames[0].type != MessageType.RESPONSE or frames[0].stream_id != 1:
            raise Crash(f"bad response frame(s): {frames}")
        resp = ttrpc_pb2.Response()
        resp.ParseFromString(frames[0].payload)
        if resp.HasField("status") and resp.status.code != 0:
            return f"status:{Code(resp.status.code).name}"
        return "ok"


# -- the worker -----------------------------------------------------------------------------------------------------

@dataclass
class Stats:
    count: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    crashes: list[dict[str, Any]] = field(default_factory=list)
    crash_count: int = 0
    hangs: list[dict[str, Any]] = field(default_factory=list)
    max_ms: float = 0.0
    total_s: float = 0.0


def _on_prof(signum: int, frame: Any) -> None:
    raise Hang()


def _checker(target: str, work: Path) -> Callable[[bytes, random.Random], str]:
    if target == "nri":
        return NriHarness(work).check
    return {"ttrpc": check_ttrpc, "mux": check_mux, "front": check_front}[target]


def run_one(check: Callable[[bytes, random.Random], str], data: bytes, rng: random.Random, hang_s: float
            ) -> tuple[str, float, BaseException | None]:
    """(outcome, seconds, exception) of one input under a CPU-time alarm of 5 x hang_s."""
    t0 = time.perf_counter()
    signal.setitimer(signal.ITIMER_PROF, hang_s * 5)
    try:
        out = check(data, rng)
        exc = None
    except Hang as h:
        out, exc = "hang", h
    except Exception as e:  # noqa: BLE001  -- anything not handled inside check() is a crash
        out, exc = "crash", e
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    return out, time.perf_counter() - t0, exc


def worker(slot: int, tasks: Any, results: Any, progress: Any, seed: int, hang_s: float, work: str) -> None:
    signal.signal(signal.SIGPROF, _on_prof)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    checkers: dict[str, Callable[[bytes, random.Random], str]] = {}
    corpora = {t: seeds(t) for t in TARGETS}
    _NRI_INNER.extend(_nri_requests())
    while True:
        task = tasks.get()
        if task is None:
            return
        ti, start, end = task
        target = TARGETS[ti]
        check = checkers.get(target)
        if check is None:
            check = checkers[target] = _checker(target, Path(work) / f"w{slot}-{target}")
        st = Stats()
        for i in range(start, end):
            progress[slot * 2], progress[slot * 2 + 1] = ti, i
            kind, data = make_input(seed, target, i, corpora[target])
            rng = random.Random(i)
            out, secs, exc = run_one(check, data, rng, hang_s)
            if out not in ("crash", "hang") and secs > hang_s:
                again = [run_one(check, data, random.Random(i), hang_s)[1] for _ in range(3)]
                if min(again) > hang_s:
                    out = "hang"
            if out == "hang":
                st.hangs.append({"target": target, "index": i, "kind": kind, "seconds": round(secs, 3),
                                 "input_hex": data.hex()})
                if target == "nri":
                    checkers.pop(target, None)  # its loop was interrupted: start afresh
            elif out == "crash":
                st.crash_count += 1
                if len(st.crashes) < MAX_RECORDED:
                    root = exc.__cause__ or exc if exc is not None else None  # a Crash names the real error
                    tb = traceback.extract_tb(root.__traceback__)[-1] if root and root.__traceback__ else None
                    st.crashes.append({"target": target, "index": i, "kind": kind, "error": type(exc).__name__,
                                       "message": str(exc)[:500], "where": f"{tb.filename}:{tb.lineno}" if tb else "",
                                       "input_hex": data.hex()})
            st.count += 1
            st.outcomes[out] = st.outcomes.get(out, 0) + 1
            st.max_ms = max(st.max_ms, secs * 1e3)
            st.total_s += secs
        results.put((ti, st))


# -- the parent -----------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs in total, split evenly over the targets")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {', '.join(TARGETS)}")
    ap.add_argument("--workers", type=int, default=2, choices=(1, 2))
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--hang-s", type=float, default=1.0, help="an input taking longer than this is a hang")
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    if bad := [t for t in targets if t not in TARGETS]:
        ap.error(f"unknown target(s) {bad}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # a root-only place, so the policy's node-path checks let it write records and CRIU configs (not /tmp, /dev/shm)
    work = tempfile.mkdtemp(prefix="gpucr-fuzz-", dir="/run" if os.geteuid() == 0 else None)
    per = args.count // len(targets)
    tasks: Any = mp.Queue()
    results: Any = mp.Queue()
    for t in targets:
        for s in range(0, per, TASK_INPUTS):
            tasks.put((TARGETS.index(t), s, min(per, s + TASK_INPUTS)))
    progress = mp.Array("q", [-1] * (2 * args.workers), lock=False)
    procs: dict[int, mp.Process] = {}

    def spawn(slot: int) -> None:
        p = mp.Process(target=worker, args=(slot, tasks, results, progress, args.seed, args.hang_s, work), daemon=True)
        p.start()
        procs[slot] = p

    for slot in range(args.workers):
        spawn(slot)
    totals = {t: Stats() for t in targets}
    watchdog_hangs: list[dict[str, Any]] = []
    n_tasks = sum(-(-per // TASK_INPUTS) for _ in targets)
    done = 0
    t0 = time.monotonic()
    last: dict[int, tuple[int, int, float]] = {}
    load0 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        while done < n_tasks:
            try:
                ti, st = results.get(timeout=1.0)
            except Exception:  # queue.Empty: look at the workers
                now = time.monotonic()
                for slot, p in list(procs.items()):
                    cur = (progress[slot * 2], progress[slot * 2 + 1])
                    seen = last.get(slot)
                    if seen is None or seen[:2] != cur:
                        last[slot] = (*cur, now)
                    elif now - seen[2] > WATCHDOG_S or not p.is_alive():
                        target = TARGETS[cur[0]]
                        _, data = make_input(args.seed, target, cur[1], seeds(target))
                        why = "stuck" if p.is_alive() else f"died (exit {p.exitcode})"
                        print(f"worker {slot} {why} in {target} input {cur[1]}", file=sys.stderr)
                        watchdog_hangs.append({"target": target, "index": cur[1], "why": why,
                                               "input_hex": data.hex()})
                        p.kill()
                        p.join()
                        # the rest of its task is lost with it: requeue from the next input
                        done_in_task = cur[1] + 1
                        end = -(-(cur[1] + 1) // TASK_INPUTS) * TASK_INPUTS
                        if done_in_task < min(end, per):
                            tasks.put((cur[0], done_in_task, min(end, per)))
                            n_tasks += 1
                        done += 1  # the killed task counts as ended; its inputs before cur[1] are not counted
                        last.pop(slot, None)
                        spawn(slot)
                continue
            tot = totals[TARGETS[ti]]
            tot.count += st.count
            for k, v in st.outcomes.items():
                tot.outcomes[k] = tot.outcomes.get(k, 0) + v
            tot.crash_count += st.crash_count
            tot.crashes.extend(st.crashes[:MAX_RECORDED - len(tot.crashes)])
            tot.hangs.extend(st.hangs)
            tot.max_ms = max(tot.max_ms, st.max_ms)
            tot.total_s += st.total_s
            done += 1
            if done % 20 == 0:
                n = sum(s.count for s in totals.values())
                print(f"{done}/{n_tasks} tasks, {n} inputs, {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        for _ in procs:
            tasks.put(None)
        for p in procs.values():
            p.join(30)
            if p.is_alive():
                p.kill()
        shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - t0
    load1 = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return write_report(args, targets, totals, watchdog_hangs, wall, (load0, load1))


def write_report(args: argparse.Namespace, targets: list[str], totals: dict[str, Stats],
                 watchdog_hangs: list[dict[str, Any]], wall: float, load: tuple[str, str]) -> int:
    import google.protobuf

    crashes = [c for t in targets for c in totals[t].crashes]
    hangs = [h for t in targets for h in totals[t].hangs] + watchdog_hangs
    n = sum(totals[t].count for t in targets)
    n_crash = sum(totals[t].crash_count for t in targets)
    commit = os.popen(f"git -C {REPO} rev-parse --short HEAD 2>/dev/null").read().strip() or "?"
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit, "seed": args.seed,
        "workers": args.workers, "hang_s": args.hang_s, "inputs": n, "wall_s": round(wall, 1), "crashes": n_crash,
        "hangs": len(hangs), "load_before": load[0], "load_after": load[1],
        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"protobuf {google.protobuf.__version__}",
        "targets": {t: {"inputs": totals[t].count, "outcomes": dict(sorted(totals[t].outcomes.items())),
                        "crashes": totals[t].crash_count, "hangs": len(totals[t].hangs),
                        "max_ms": round(totals[t].max_ms, 2),
                        "mean_us": round(totals[t].total_s / max(1, totals[t].count) * 1e6, 1)} for t in targets},
    }
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    with (args.out_dir / "crashes.jsonl").open("w") as f:
        f.writelines(json.dumps(c) + "\n" for c in crashes)
    with (args.out_dir / "hangs.jsonl").open("w") as f:
        f.writelines(json.dumps(h) + "\n" for h in hangs)
    lines = [f"## {summary['date']} (gpucr {commit}, seed {args.seed})", "",
             f"Machine: {summary['machine']}; {args.workers} workers. Load average before {load[0]}, after {load[1]}.",
             f"{n} inputs in {wall:.0f} s; crashes: {n_crash}; hangs (> {args.hang_s:g} s): {len(hangs)}.", "",
             "| target | inputs | crashes | hangs | max ms | mean us | outcomes |", "|---|---|---|---|---|---|---|"]
    for t in targets:
        s = summary["targets"][t]  # type: ignore[index]
        outs = ", ".join(f"{k} {v}" for k, v in s["outcomes"].items())
        lines.append(f"| {t} | {s['inputs']} | {s['crashes']} | {s['hangs']} | {s['max_ms']} | {s['mean_us']} | "
                     f"{outs} |")
    for c in crashes[:10]:
        lines.append(f"\ncrash: {c['target']} #{c['index']} {c['error']} at {c['where']}: {c['message'][:200]} "
                     f"(input {c['input_hex'][:120]})")
    print("\n".join(lines))
    return 1 if n_crash or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
