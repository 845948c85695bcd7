"""gpucr as installed, with NO node config at all: ``gpucr plugin`` on its defaults (no ``/etc/gpucr/config.toml``, no
``--config``), the OCI hook installed by ``install/hook.sh install`` at the default ``hook_path``
(``/usr/libexec/gpucr/gpucr-hook``) or not installed at all, under real containerd 1.7.24 and 2.1.9.

A managed CRI container running the fake CUDA app is checkpointed through the front (``ctr c checkpoint --task``),
killed and restored (``ctr c restore``): the counter continues and the fake reports RUNNING. Without the hook the plugin
logs one error naming it and the fix, injects no hooks, the container starts, and the dump is still GPU-safe (the
front finds the container from /proc). The only test-only setting is the front's ``libcuda``/``libnvml`` (the fake
driver), a key of the front's own configuration, not the node's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nri_plugin.policy.config import DEFAULT_CONFIG_PATH, NodeConfig
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import FrontRoute, front_cuda_hooks
from tests.front.test_gpufront import _n, _task_pid, cri_workload, fake  # noqa: F401 (fixture)
from tests.testenv import INSTALL, Containerd, running_plugin, wait_for

pytestmark = pytest.mark.integration

DEFAULTS = NodeConfig()
HOOK = Path(DEFAULTS.hook_path)
#: what the defaults make on the node, removed afterwards (only what did not exist before the module)
MADE = (DEFAULTS.state_dir, DEFAULTS.criu_config_dir.parent, HOOK.parent, Path("/usr/lib/gpucr"))


def hook_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(INSTALL / "hook.sh"), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def defaults_node() -> Iterator[None]:
    """A node with no gpucr config and nothing of gpucr's at the default paths; cleaned of what the test made."""
    if DEFAULT_CONFIG_PATH.exists():
        pytest.fail(f"{DEFAULT_CONFIG_PATH} exists: this test needs a node without gpucr's config", pytrace=False)
    if HOOK.exists():
        pytest.fail(f"{HOOK} is installed already (install/hook.sh uninstall): this test installs and removes it",
                    pytrace=False)
    before = {p: p.exists() for p in MADE}
    try:
        yield
    finally:
        hook_sh("uninstall")
        for p, existed in before.items():
            if not existed:
                shutil.rmtree(p, ignore_errors=True)
        leftovers = [str(p) for p, existed in before.items() if not existed and p.exists()]
        assert not leftovers, f"left on the node: {leftovers}"


@pytest.fixture(params=["hook-installed", "hook-missing"])
def hook_state(request: pytest.FixtureRequest, defaults_node: None) -> Iterator[str]:
    if request.param == "hook-installed":
        r = hook_sh("install")  # the defaults: /usr/libexec/gpucr/gpucr-hook, code in /usr/lib/gpucr
        assert r.returncode == 0, r.stderr
        assert HOOK.is_file() and os.access(HOOK, os.X_OK)
    try:
        yield request.param
    finally:
        r = hook_sh("uninstall")
        assert r.returncode == 0, r.stderr
        assert not HOOK.exists()


@pytest.fixture
def default_plugin(front_containerd: Containerd, hook_state: str, tmp_path: Path) -> Iterator[Path]:
    """``gpucr plugin --socket S --log-file L``: nothing else, so every node setting is a default."""
    log = tmp_path / "plugin.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUCR_", "NRI_"))}
    with running_plugin(front_containerd.nri_socket, log, env=env):
        yield log


@pytest.fixture
def default_front(front_route: FrontRoute, fake: FakeCuda) -> Iterator[FrontRoute]:
    """The front with gpucr's CUDA hooks and no node_config key: it reads /etc/gpucr/config.toml (absent: defaults),
    as installed; only the driver is the fake (the front's own libcuda/libnvml keys)."""
    with front_route.configured(hooks=front_cuda_hooks(), libcuda=str(fake.lib), libnvml=str(fake.lib)):
        yield front_route
    fake.clear_failures()


def _bundle(ctrd: Containerd, cid: str) -> dict:  # type: ignore[type-arg]
    p = Path(ctrd.info["state_dir"]) / "io.containerd.runtime.v2.task" / "k8s.io" / cid / "config.json"
    return json.loads(p.read_text())  # type: ignore[no-any-return]


def test_defaults_managed_cuda_container_checkpoint_and_restore(
        front_containerd: Containerd, hook_state: str, default_plugin: Path, default_front: FrontRoute,
        fake: FakeCuda, tmp_path: Path) -> None:
    ctrd, log = front_containerd, default_plugin
    text = log.read_text()
    configured = next(ln for ln in text.splitlines() if "configured by containerd" in ln)
    assert f"state dir {DEFAULTS.state_dir}" in configured, configured
    errors = [ln for ln in text.splitlines() if " ERROR " in ln]
    if hook_state == "hook-installed":
        assert f"OCI hooks {HOOK}" in configured and not errors, text
    else:
        assert "OCI hooks none" in configured, configured
        (err,) = errors  # exactly one line, naming the hook and the fix
        assert f"hook_path {HOOK} is unusable: {HOOK} does not exist; gpucr injects no OCI hooks" in err, err
        assert "fix: install it with `install/hook.sh install`" in err, err
    ref = f"localhost/gd-{uuid.uuid4().hex[:6]}:ckpt"
    restored = f"gd-restored-{uuid.uuid4().hex[:6]}"
    with cri_workload(ctrd, fake, tmp_path) as (c, w):
        spec = _bundle(ctrd, w.cid)
        conf = Path(spec["annotations"]["org.criu.config"])
        assert conf.parent == DEFAULTS.criu_config_dir and conf.is_file()
        rec = json.loads((DEFAULTS.state_dir / "containers" / f"{w.cid}.json").read_text())
        assert rec["managed"] and rec["criu_config"] == str(conf)
        if hook_state == "hook-installed":
            assert [(h["path"], h["args"][1]) for h in spec["hooks"]["createRuntime"]] == [(str(HOOK),
                                                                                          "create-runtime")]
            assert rec["pid"] == w.pid and w.cid in rec["cgroup"]  # the installed hook ran as runc runs it
        else:
            assert not spec.get("hooks", {}).get("createRuntime") and not spec.get("hooks", {}).get("poststop")
            assert rec["pid"] == 0 and rec["cgroup"] == ""
        mark = default_front.log_mark()
        try:
            lo = _n(w.data)
            ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", w.cid, ref, namespace="k8s.io")
            flog = default_front.log_since(mark)
            assert f"(pid {w.pid}), managed (" in flog, flog
            assert "locked and checkpointed 1 CUDA process(es)" in flog and "restored and unlocked 1" in flog, flog
            assert fake.state(w.pid) == "RUNNING"
            hi = _n(w.data)  # the dump saw a value in [lo, hi]: the app runs on after a --task checkpoint
            c.stop_container(w.cid, 0)
            before = len((w.data / "log").read_text().split())
            mark = default_front.log_mark()
            ctrd.ctr("c", "restore", "--live", "--rw", restored, ref, namespace="k8s.io")
            wait_for(lambda: len((w.data / "log").read_text().split()) >= before + 3, what="restored counter")
            after = [int(x) for x in (w.data / "log").read_text().split()[before:]]
            assert lo <= after[0] - 1 <= hi + 1, (lo, hi, after)  # continues from the checkpointed value
            assert after == list(range(after[0], after[0] + len(after)))
            new = _task_pid(ctrd, restored, "k8s.io")
            assert new != w.pid and fake.state(new) == "RUNNING"
            flog = default_front.log_since(mark)
            assert "RESTORE success=True" in flog and f"restored and unlocked 1 CUDA process(es) [{new}]" in flog, flog
        finally:
            ctrd.remove_restored(restored, ref, namespace="k8s.io")
    # the record goes with the container (poststop hook, or the plugin's RemoveContainer without hooks)
    wait_for(lambda: not (DEFAULTS.state_dir / "containers" / f"{w.cid}.json").exists(),
             what="the container's record to be removed")
    assert len([ln for ln in log.read_text().splitlines() if " ERROR " in ln]) == len(errors)  # reported once
