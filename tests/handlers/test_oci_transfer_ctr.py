"""``gpucr import`` of containerd's own checkpoint image (``ctr c checkpoint --task``, an index in containerd's
content store holding the CRIU images as a tar), on containerd 1.7.24 and 2.1.9 with the front route and the fake
CUDA driver (the node, containerd and plugin of ``tests/front/test_restore_from.py``).

A managed fake-CUDA CRI container is checkpointed with ``ctr -n k8s.io c checkpoint --task`` through the front,
imported as ``ROOT/NAME`` and restored into a new pod through ``gpucr.io/restore-from: NAME``: the counter goes on,
the fake driver reports the new pid RUNNING, CRI lists, stops and removes it (``tests.front.restoring``). The same image with its CRIU tar
changed in the content store is refused with one error line, and nothing is written under the root.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.ckpt.oci_image import CTR_CRIU_TAR
from nri_plugin.containerd import ContentClient
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute, front_route  # noqa: F401  (fixture)
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import fake, gpu_front  # noqa: F401  (fixtures)
from tests.front.restoring import cuda_counter_pod, restore_and_check
from tests.front.test_restore_from import ctrd, node, plugin  # noqa: F401  (fixtures)
from tests.testenv import REPO, Containerd

pytestmark = pytest.mark.integration

HOOKS = "nri_plugin.handlers.front_cuda:make"


def _gpucr(node: dict[str, Path], ctrd: Containerd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", *args, "--address", ctrd.address,
                           "--namespace", "k8s.io", "--config", str(node["config"])],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def _criu_blob(ctrd: Containerd, ref: str) -> tuple[Path, int]:
    """The CRIU tar's blob file in the instance's content store, and its size as the index records it."""
    with ContentClient(ctrd.address, "k8s.io") as cc:
        index = json.loads(b"".join(cc.read(cc.image(ref).digest)))
    (d,) = [m for m in index["manifests"] if m["mediaType"] == CTR_CRIU_TAR]
    return (Path(ctrd.info["root_dir"]) / "io.containerd.content.v1.content/blobs/sha256"
            / d["digest"].removeprefix("sha256:"), int(d["size"]))


@pytest.mark.parametrize("rw", [False, True], ids=["task", "task-rw"])
def test_ctr_checkpoint_image_imported_then_restored(ctrd: Containerd, plugin: Any,  # noqa: F811
                                                      front_route: FrontRoute, node: dict[str, Path],  # noqa: F811
                                                      fake: FakeCuda, tmp_path: Path, rw: bool) -> None:  # noqa: F811
    """With ``--rw`` the image also holds the container's rw layer: imported as ``rootfs-diff.tar`` and applied to
    the new container's rootfs (a file the old container wrote there is in the new one); without, it is not."""
    data = tmp_path / "data"
    data.mkdir()
    ref, name = f"localhost/gpucr-ctr-ckpt/cuda:{int(rw)}", f"ctr-image-{int(rw)}"
    root = node["root"]
    with front_route.configured(hooks=HOOKS, node_config=str(node["config"]), libnvml=str(fake.lib)):
        with cuda_counter_pod(ctrd, fake, data) as (c, cid, pid):
            r = c.exec_sync(cid, ["/bin/sh", "-c", "echo written-before > /rw-marker"])
            assert r.exit_code == 0, r
            lo = _n(data)
            ctrd.ctr("c", "checkpoint", "--task", *(["--rw"] if rw else []), cid, ref, namespace="k8s.io")
            hi = _n(data)
            c.stop_container(cid, 0)
        try:
            r = _gpucr(node, ctrd, "import", ref, name, "--json")
            assert r.returncode == 0, r.stderr
            s = json.loads(r.stdout)
            assert s["kind"] == "containerd-checkpoint" and s["name"] == name and s["rootfs_diff"] is rw, s
            ck = root / name
            meta = json.loads((ck / "gpucr.json").read_text())
            assert meta["via"] == "imported (containerd checkpoint image)" and meta["kind"] == "runtime", meta
            assert meta["cuda_marker"] is True and meta["image"] == ref, meta
            assert "images/descriptors.json" in meta["manifest"] and "images/gpucr-cuda.json" in meta["manifest"]
            assert ("rootfs-diff.tar" in meta["manifest"]) is rw, sorted(meta["manifest"])
            for p in [ck, *ck.rglob("*")]:
                st = p.lstat()
                assert stat.S_IMODE(st.st_mode) == (0o700 if stat.S_ISDIR(st.st_mode) else 0o600), p
                assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), p
            assert not [p for p in root.iterdir() if p.name.startswith(".") and "gpucr" in p.name]

            data2 = tmp_path / "data2"
            shutil.copytree(data, data2)

            def rw_marker(c: Any, new: str, npid: int) -> None:
                r = c.exec_sync(new, ["/bin/sh", "-c", "cat /rw-marker || echo absent"])
                assert r.exit_code == 0 and r.stdout.strip() == (b"written-before" if rw else b"absent"), r

            restore_and_check(ctrd, fake, data2, name, lo=lo, hi=hi, old_pid=pid, during=rw_marker)

            blob, size = _criu_blob(ctrd, ref)
            assert blob.stat().st_size == size
            raw = bytearray(blob.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            blob.chmod(0o600)
            blob.write_bytes(bytes(raw))
            entries = sorted(p.name for p in root.iterdir())
            r = _gpucr(node, ctrd, "import", ref, f"ctr-tampered-{int(rw)}")
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
            assert r.stderr.startswith("gpucr import: error: ") and "tampered with" in r.stderr, r.stderr
            assert sorted(p.name for p in root.iterdir()) == entries
        finally:
            shutil.rmtree(root / name, ignore_errors=True)
            ctrd.ctr("images", "rm", ref, namespace="k8s.io", check=False)
