"""Migration between two "nodes": two private containerd instances (1.7.24, 2.1.9), the second in its own network
and mount namespaces (``GPUCR_CONTAINERD_UNSHARE=1``), each with its own gpucr plugin, state dir and node config,
both routed through gpucr's runc wrapper and CRIU front, with the fake CUDA driver.

A managed CRI container is checkpointed on node A through the front (``gpucr checkpoint --via-runtime``: CRI
CheckpointContainer on 2.1.9, the task API on 1.7.24) and restored into a new pod on node B (a) from the shared
checkpoint dir, which each node mounts at its own path (bind mounts of one dir, made before B's namespaces), and
(b) through ``gpucr export`` -> ``ctr images export`` -> ``ctr images import`` -> ``gpucr import``: the counter
continues, the fake driver reports the restored process RUNNING, CRI lists it, exec, stop and remove work. Bad
imports (tampered layer in B's content store, an image that is not a checkpoint, a name that exists, a reference
that does not) fail with one error each and write nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.containerd import ContentClient
from tests.conftest import VERSIONS
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute, front_route  # noqa: F401  (fixture)
from tests.front.test_front_containerd import _n
from tests.front.test_gpufront import cuda_running, fake  # noqa: F401  (fixture)
from tests.front.restoring import counter_config as _container
from tests.front.restoring import restore_and_check
from tests.front.test_restore_from import _digest
from tests.testenv import INSTALL, REPO, TEST_ROOT, Containerd, installed_hook, wait_for

pytestmark = pytest.mark.integration

INSTANCE = os.environ.get("GPUCR_INSTANCE") or "default"
HOOKS = "nri_plugin.handlers.front_cuda:make"


def _sh(cmd: str, version: str, instance: str, route: FrontRoute, unshare: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPUCR_INSTANCE": instance, "GPUCR_CRIU_DIR": str(route.criu.parent),
           "GPUCR_RUNC_DIR": str(route.runc.parent), "GPUCR_CONTAINERD_UNSHARE": "1" if unshare else ""}
    return subprocess.run(["bash", str(INSTALL / "containerd.sh"), cmd, version], capture_output=True, text=True,
                          env=env)


class Node:
    """One node: its containerd, its config (own state and CRIU config dirs; checkpoint_root = its mount of the
    shared dir) and its gpucr plugin."""

    def __init__(self, name: str, ctrd: Containerd, config: Path, root: Path, state: Path, log: Path) -> None:
        self.name, self.ctrd, self.config, self.root, self.state, self.log = name, ctrd, config, root, state, log
        self.plugin: subprocess.Popen[bytes] | None = None

    def gpucr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", *args, "--config", str(self.config)],
                              capture_output=True, text=True, cwd=REPO, timeout=300)


def _write_config(d: Path, hook: Path, root: Path, fake: FakeCuda) -> Path:
    cfg = d / "config.toml"
    cfg.write_text(f'state_dir = "{d / "state"}"\ncriu_config_dir = "{d / "criu"}"\nhook_path = "{hook}"\n'
                   f'runc_criu_config = "{d / "runc.conf"}"\nlibcuda = "{fake.lib}"\nlock_timeout_ms = 2000\n'
                   f'driver_call_timeout_s = 10\ncheckpoint_root = "{root}"\n')
    return cfg


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"containerd-{v}" for v in VERSIONS])
def nodes(request: pytest.FixtureRequest, front_route: FrontRoute, fake: FakeCuda) -> Iterator[dict[str, Any]]:  # noqa: F811
    version = request.param
    top = TEST_ROOT / f"migrate-{INSTANCE}"
    subprocess.run(["umount", str(top / "a" / "mnt"), str(top / "b" / "mnt")], capture_output=True)
    shutil.rmtree(top, ignore_errors=True)
    shared = top / "shared"
    shared.mkdir(mode=0o700, parents=True)
    mounted: list[Path] = []
    started: list[tuple[str, bool]] = []
    made: list[Node] = []
    try:
        with installed_hook(top / "libexec") as hook:
            for name, unshare in (("a", False), ("b", True)):
                d = top / name
                mnt = d / "mnt"
                mnt.mkdir(mode=0o700, parents=True)
                subprocess.run(["mount", "--bind", str(shared), str(mnt)], check=True)
                mounted.append(mnt)
                cfg = _write_config(d, hook, mnt, fake)
                inst = f"{INSTANCE}-m{name}"
                r = _sh("start", version, inst, front_route, unshare)
                started.append((inst, unshare))
                if r.returncode != 0:
                    pytest.fail(f"install/containerd.sh start {version} ({inst}) failed:\n{r.stderr}", pytrace=False)
                ctrd = Containerd(json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()))
                node = Node(name, ctrd, cfg, mnt, d / "state", d / "plugin.log")
                node.plugin = subprocess.Popen(
                    [sys.executable, "-m", "nri_plugin.cli.main", "-v", "plugin", "--socket", ctrd.nri_socket,
                     "--config", str(cfg), "--log-file", str(node.log)], cwd=REPO, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                made.append(node)
                wait_for(lambda: node.log.exists() and "synchronized" in node.log.read_text(),
                         what=f"gpucr plugin of node {name} to synchronize")
            a, b = made
            pid_b = b.ctrd.info["pid"]
            assert os.readlink(f"/proc/{pid_b}/ns/net") != os.readlink("/proc/self/ns/net")
            assert os.readlink(f"/proc/{pid_b}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
            yield {"a": a, "b": b, "shared": shared, "top": top, "version": version}
    finally:
        for n in made:
            if n.plugin is not None:
                n.plugin.terminate()
                n.plugin.wait(10)
        # B first: on a cgroup-v2-only host runc 1.1's restore leaves the restored tree in the checkpointed
        # container's cgroup path (docs/design.md), i.e. under A's cgroup parent, which A's stop then removes
        for inst, unshare in reversed(started):
            _sh("stop", version, inst, front_route, unshare)
        for m in mounted:
            subprocess.run(["umount", str(m)], check=False)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint(nodes: dict[str, Any], front_route: FrontRoute, fake: FakeCuda,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Node A: a managed fake-CUDA CRI container checkpointed through the front with `gpucr checkpoint
    --via-runtime --leave-running` into its mount of the shared dir (ck1), then stopped and removed."""
    a: Node = nodes["a"]
    data = tmp_path_factory.mktemp("migrate-src") / "data"
    data.mkdir()
    with front_route.configured(hooks=HOOKS, node_config=str(a.config), libnvml=str(fake.lib)):
        with a.ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
            cid = c.create_container(pod_id, _container(fake, data, "cuda", {}, a.ctrd.image), cfg)
            c.start_container(cid)
            pid = int(c.container_status(cid, verbose=True)[1]["info"]["pid"])
            wait_for(lambda: _n(data) >= 2, what="CRI counter to start")
            cuda_running(fake, pid)
            lo = _n(data)
            r = a.gpucr("checkpoint", cid, "--via-runtime", "--leave-running", "--to", str(a.root / "ck1"), "--json",
                        "--address", a.ctrd.address, "--libcuda", str(fake.lib))
            assert r.returncode == 0, r.stderr
            hi = _n(data)
            c.stop_container(cid, 0)
    return {"data": data, "lo": lo, "hi": hi, "pid": pid}


def _restore_on(node: Node, name: str, ck: dict[str, Any], front_route: FrontRoute, fake: FakeCuda,  # noqa: F811
                tmp: Path) -> None:
    """Restore checkpoint ``name`` into a new pod on ``node`` through gpucr.io/restore-from and check it as
    every restore test does (``tests.front.restoring``), on this node's network namespace."""
    data = tmp / f"data-{name}"
    shutil.copytree(ck["data"], data)
    with front_route.configured(hooks=HOOKS, node_config=str(node.config), libnvml=str(fake.lib)):
        mark = front_route.log_mark()

        def on_node(c: Any, cid: str, pid: int) -> None:
            daemon = node.ctrd.info["pid"]  # the restored pod lives in this node's network namespace
            assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink(f"/proc/{daemon}/ns/net")
            log = front_route.log_since(mark)
            assert "RESTORE success=True" in log and f"restored and unlocked 1 CUDA process(es) [{pid}]" in log, log
            assert f"will be restored from checkpoint '{name}'" in node.log.read_text()

        cid = restore_and_check(
            node.ctrd, fake, data, name, lo=ck["lo"], hi=ck["hi"], old_pid=ck["pid"],
            pod_annotations={"gpucr.io/checkpoint": "enabled"}, during=on_node,
            explain=lambda exc, _: f"{exc}\n{front_route.log_since(mark)[-3000:]}\n{node.ctrd.log_tail(30)}").cid
    assert not (node.root / ".restore" / cid).exists()
    assert not list((node.root / ".restore-locks").glob("*.lock"))


def _local(ctrd: Containerd) -> tuple[str, ...]:
    """containerd 2.x's ctr exports and imports through the transfer service by default, and its export truncated
    the archive about 1 run in 5 here (a tar ending early: ``_check_blobs``); ``--local`` runs them in ctr itself,
    as docs/flows.md tells users to. 1.7's ctr has no transfer service (and no ``--local``)."""
    return ("--local",) if ctrd.major_minor[0] >= 2 else ()


def _check_blobs(archive: Path) -> None:
    """Every blob in an OCI archive matches the digest it is named by (tells a bad export from a bad import)."""
    import hashlib
    import tarfile
    with tarfile.open(archive) as tf:
        for m in tf.getmembers():
            if m.isfile() and m.name.startswith("blobs/sha256/"):
                f = tf.extractfile(m)
                assert f is not None
                assert hashlib.sha256(f.read()).hexdigest() == m.name.rsplit("/", 1)[1], (m.name, m.size)


def test_restore_on_another_node_from_the_shared_dir(nodes: dict[str, Any], checkpoint: dict[str, Any],
                                                     front_route: FrontRoute, fake: FakeCuda,  # noqa: F811
                                                     tmp_path: Path) -> None:
    """(a) node B restores ck1 from its own mount of the shared dir; the checkpoint is unchanged."""
    digest = _digest(nodes["shared"] / "ck1")
    _restore_on(nodes["b"], "ck1", checkpoint, front_route, fake, tmp_path)
    assert _digest(nodes["shared"] / "ck1") == digest


@pytest.mark.parametrize("compress", ["zstd", "none"])
def test_restore_on_another_node_through_an_image(nodes: dict[str, Any], checkpoint: dict[str, Any],
                                                  front_route: FrontRoute, fake: FakeCuda,  # noqa: F811
                                                  tmp_path: Path, compress: str) -> None:
    """(b) gpucr export on A -> ctr images export (a file) -> ctr images import --no-unpack on B -> gpucr import on
    B under a new name -> restored into a new pod on B."""
    a, b = nodes["a"], nodes["b"]
    ref, name = f"localhost/gpucr-ckpt/ck1:{compress}", f"moved-{compress}"
    r = a.gpucr("export", "ck1", ref, "--compress", compress, "--address", a.ctrd.address, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["layer_media_type"].endswith({"zstd": "+zstd", "none": ".tar"}[compress]) and s["kind"] in (
        "images", "cri-archive"), s
    archive = tmp_path / "ck1.oci.tar"
    a.ctrd.ctr("images", "export", *_local(a.ctrd), str(archive), ref)
    _check_blobs(archive)
    b.ctrd.ctr("images", "import", *_local(b.ctrd), "--no-unpack", str(archive))
    assert ref in b.ctrd.ctr("images", "ls", "-q").stdout.split()
    r = b.gpucr("import", ref, name, "--address", b.ctrd.address, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["exported_as"] == "ck1"
    try:
        _restore_on(b, name, checkpoint, front_route, fake, tmp_path)
    finally:
        shutil.rmtree(b.root / name, ignore_errors=True)


def test_bad_imports_write_nothing(nodes: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """A tampered layer in B's content store, an image that is not a gpucr checkpoint, a NAME that exists, a REF
    that does not: one clear error line each; the checkpoint root holds what it held."""
    a, b = nodes["a"], nodes["b"]
    ref = "localhost/gpucr-ckpt/ck1:tampered"
    assert a.gpucr("export", "ck1", ref, "--address", a.ctrd.address).returncode == 0
    archive = nodes["top"] / "tampered.oci.tar"
    a.ctrd.ctr("images", "export", *_local(a.ctrd), str(archive), ref)
    b.ctrd.ctr("images", "import", *_local(b.ctrd), "--no-unpack", str(archive))
    archive.unlink()
    with ContentClient(b.ctrd.address) as cc:
        manifest = b"".join(cc.read(cc.image(ref).digest))
    layer = json.loads(manifest)["layers"][0]
    target = Path(b.ctrd.info["root_dir"]) / "io.containerd.content.v1.content/blobs/sha256" / \
        layer["digest"].removeprefix("sha256:")
    assert target.stat().st_size == layer["size"]
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.chmod(0o600)
    target.write_bytes(bytes(raw))
    entries = sorted(p.name for p in nodes["shared"].iterdir())
    cases = [
        ((ref, "t1"), "the image is corrupt or was tampered with"),
        ((b.ctrd.image, "t2"), "is not a gpucr checkpoint"),
        ((ref, "ck1"), "checkpoint 'ck1' exists already"),
        (("localhost/gpucr-ckpt/nothing:1", "t3"), "no image 'localhost/gpucr-ckpt/nothing:1'"),
    ]
    for (image, name), expect in cases:
        r = b.gpucr("import", image, name, "--address", b.ctrd.address)
        assert r.returncode == 1 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, (image, r.stderr)
        assert r.stderr.startswith("gpucr import: error: ")
        assert sorted(p.name for p in nodes["shared"].iterdir()) == entries
