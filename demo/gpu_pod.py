"""A CRI pod that trains on the GPU, for ``make demo`` on a GPU machine and for bench/gpu_front.py.

The container needs no image of its own: a root of merged-/usr symlinks over which the host's /usr, /etc, /opt (and
their submounts, e.g. the driver's) and this Python's torch are bound read-only; the /dev/nvidia* devices are given
through CRI and LD_LIBRARY_PATH points at the driver. The workload (bench/gpu_cr.py's) holds random GPU data, trains
an MLP, writes its step to /data/step and, asked through /data/verify-TAG, a digest of its GPU data to
/data/digest-TAG.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from _workload import WORKLOAD  # noqa: E402

__all__ = ["HOSTROOT", "WORKLOAD", "gpu_container_config", "has_gpu", "hostroot_image", "step", "verify"]

HOSTROOT = "localhost/gpucr-hostroot:test"


def sh(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True)


def has_gpu() -> bool:
    """An NVIDIA GPU this machine can use: its device node and a working nvidia-smi."""
    if not Path("/dev/nvidia0").exists():
        return False
    try:
        return sh(["nvidia-smi", "-L"]).returncode == 0
    except OSError:
        return False


def hostroot_image(path: Path) -> None:
    """A one-layer OCI image: merged-/usr symlinks and empty dirs; the host's /usr, /etc, /opt are bound over it."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        # a copy of the host's /etc, for containers that do not bind it (bench/gpu_nvidia_runtime.py: the NVIDIA
        # runtime mounts files under /etc); a bound /etc covers it
        tar.add("/etc", arcname="etc", filter=lambda ti: ti if ti.isfile() or ti.isdir() or ti.issym() else None)
        for d in ("usr", "opt", "proc", "sys", "dev", "tmp", "data", "run", "var", "root", "home"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(ti)
        for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tar.addfile(ti)
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> tuple[str, int]:
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return d, len(data)

    ld, ls = blob(layer.getvalue())
    cd, cs = blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"]},
                              "rootfs": {"type": "layers", "diff_ids": [f"sha256:{ld}"]}}).encode())
    md, ms = blob(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                         "digest": f"sha256:{cd}", "size": cs},
                              "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                          "digest": f"sha256:{ld}", "size": ls}]}).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                "digest": f"sha256:{md}", "size": ms,
                                                "platform": {"architecture": "amd64", "os": "linux"},
                                                "annotations": {"io.containerd.image.name": HOSTROOT,
                                                                "org.opencontainers.image.ref.name": "test"}}]}
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for d, data in blobs.items():
            add(f"blobs/sha256/{d}", data)



def python_for_container() -> tuple[str, list[str]]:
    """This machine's Python with torch: its executable and the directories the container must see."""
    r = sh([sys.executable, "-c", "import os, sys, torch; print(os.path.realpath(sys.executable)); "
            "print(os.path.dirname(os.path.dirname(torch.__file__))); print(sys.base_prefix); print(sys.prefix)"])
    if r.returncode:
        raise SystemExit(f"{sys.executable} cannot import torch: {r.stderr}")
    exe, torch_dir, *prefixes = r.stdout.split()
    return exe, [torch_dir, *prefixes, os.path.dirname(exe)]


def gpu_mounts_and_devices() -> tuple[list[tuple[str, str, bool]], list[tuple[str, str, str]]]:
    mounts = [(p, p, True) for p in ("/usr", "/etc", "/opt") if Path(p).is_dir()]
    _, pydirs = python_for_container()
    for d in pydirs:
        if not any(d == m[0] or d.startswith(m[0] + "/") for m in mounts):
            mounts.append((d, d, True))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        if any(mp.startswith(p + "/") for p in ("/usr", "/etc", "/opt")) and Path(mp).is_dir():
            mounts.append((mp, mp, True))
    devs = []
    for p in sorted(Path("/dev").glob("nvidia*")) + sorted(Path("/dev/nvidia-caps").glob("*")):
        if p.is_char_device():
            devs.append((str(p), str(p), "rwm"))
    return mounts, devs


def gpu_container_config(data: Path, gib: float) -> Any:
    """The CRI ContainerConfig of the training container (its files in ``data``, mounted at /data)."""
    from nri_plugin.cri import container_config

    data.mkdir(parents=True, exist_ok=True)
    (data / "work.py").write_text(WORKLOAD)
    mounts, devs = gpu_mounts_and_devices()
    exe, pydirs = python_for_container()
    from nri_plugin.cri._pb import api_pb2 as cri_pb

    cfg = container_config("train", HOSTROOT, command=[exe, "/data/work.py", "/data", str(gib)],
                           env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "PATH": "/usr/bin:/bin",
                                "HOME": "/tmp", "PYTHONPATH": pydirs[0]},
                           mounts=[*mounts, (str(data), "/data", False)], devices=devs, log_path="train.log")
    cfg.linux.security_context.namespace_options.pid = cri_pb.CONTAINER  # kubelet's default: its own PID namespace
    return cfg


def step(d: Path) -> int:
    try:
        return int((d / "step").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def verify(d: Path, tag: str, timeout: float = 300) -> str:
    (d / f"verify-{tag}").write_text("")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = d / f"digest-{tag}"
        if p.exists():
            return p.read_text()
        time.sleep(0.2)
    return "timeout"
