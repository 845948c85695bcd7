"""``gpucr.io/restore-from`` through a runtime handler whose runtime chains to runc and edits the spec only at create,
as nvidia-container-runtime does (``tests/fakes/chain_runtime.py`` stands in for it: it adds a bind mount and a
device node to config.json on ``create`` and execs the ``runc`` it finds on PATH). containerd 1.7.24 and 2.1.9, runc,
CRIU; the route made by ``install/front.sh route --runc CHAIN`` is the handler's BinaryName, as ``gpucr setup
--apply`` makes it for an ``nvidia`` handler.

The container checkpointed through that handler has the injected mount, which runc's dump declares to CRIU as an
external mount. Restored the old way (``restore_route = direct``: ``CHAIN restore``, which the chain passes through
unedited) the new spec lacks it and CRIU cannot restore; through the chain (the default for a target not named runc)
the chain edits the new container's spec as for any create, the route's ``chain/runc`` restores into it, and the
restored container has the injected mount and device.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nri_plugin.cri import CriError, container_config
from nri_plugin.cri._pb import api_pb2 as pb
from tests.conftest import VERSIONS
from tests.fakes.cuda import FakeCuda
from tests.front.conftest import REAL_CRIU, private_containerd
from tests.front.test_gpufront import fake, gpu_node  # noqa: F401  (fixtures)
from tests.testenv import INSTALL, REPO, TEST_ROOT, Containerd, running_plugin, wait_for

pytestmark = pytest.mark.integration

INSTANCE = f"{os.environ.get('GPUCR_INSTANCE') or 'default'}-ch"
INJECTED = "/gpucr-injected"
INJECTED_DEV = "/dev/gpucr-chain"
COUNT = "i=0; while :; do i=$((i+1)); echo $i >> /data/log; sleep 0.2; done"


@pytest.fixture(scope="module")
def chain(fake: FakeCuda) -> Iterator[dict[str, Path]]:  # noqa: F811
    """The node (plugin config, checkpoint root), the chaining runtime with its edit, and a route targeting it."""
    d = TEST_ROOT / f"restore-chain-{INSTANCE}"
    with gpu_node(d, fake, checkpoint_root=str(d / "checkpoints")) as paths:
        paths["root"] = d / "checkpoints"
        paths["root"].mkdir(mode=0o700)
        bin_dir = d / "bin"
        bin_dir.mkdir(mode=0o755)
        os.chmod(d, 0o755)  # the route's target must sit where only root can write: d is root's, 0755
        runtime = bin_dir / "chain-runtime"
        shutil.copyfile(REPO / "tests/fakes/chain_runtime.py", runtime)
        runtime.chmod(0o755)
        inj = d / "injected"
        inj.mkdir(mode=0o755)
        (inj / "marker").write_text("injected by the chain\n")
        (bin_dir / "chain-runtime.json").write_text(json.dumps({
            "mounts": [{"destination": INJECTED, "type": "bind", "source": str(inj), "options": ["rbind", "ro"]}],
            "devices": [{"path": INJECTED_DEV, "type": "c", "major": 1, "minor": 3, "fileMode": 0o666, "uid": 0,
                         "gid": 0}]}))
        route = d / "route"
        r = subprocess.run(["bash", str(INSTALL / "front.sh"), "route", "--dir", str(route), "--real-criu",
                            str(REAL_CRIU), "--log-dir", str(d / "log"), "--hooks", "none", "--node-config",
                            str(paths["config"]), "--runc", str(runtime)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"install/front.sh route --runc {runtime} failed:\n{r.stderr}", pytrace=False)
        with (route / "path/front.conf").open("a") as f:
            f.write(f"cache_dir = {d / 'cache'}\n")
        paths.update(route=route, runtime=runtime)
        yield paths


def _extra_config(version: str, route: Path, runc_root: Path) -> str:
    table = ('plugins."io.containerd.grpc.v1.cri".containerd.runtimes.chain' if version.startswith("1.")
             else "plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.chain")
    return (f'[{table}]\n  runtime_type = "io.containerd.runc.v2"\n[{table}.options]\n'
            f'  BinaryName = "{route}/bin/runc"\n  Root = "{runc_root}"\n  SystemdCgroup = false\n')


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"containerd-{v}" for v in VERSIONS])
def ctrd(request: pytest.FixtureRequest, chain: dict[str, Path]) -> Iterator[Containerd]:
    """A private containerd with a runtime handler ``chain``: BinaryName the route's wrapper -> the chain -> runc
    (the chain's ``runc`` lookup never finds the wrapper: the route's bin/ is not on containerd's PATH)."""
    version = request.param
    extra = chain["root"].parent / f"extra-{version}.toml"
    extra.write_text(_extra_config(version, chain["route"], chain["root"].parent / f"runc-{version}"))
    with private_containerd(version, {"GPUCR_INSTANCE": INSTANCE, "GPUCR_CRIU_DIR": str(chain["route"] / "path"),
                                      "GPUCR_CONTAINERD_EXTRA_CONFIG": str(extra)}) as c:
        yield c


@pytest.fixture(scope="module")
def plugin(ctrd: Containerd, chain: dict[str, Path]) -> Iterator[subprocess.Popen[bytes]]:
    with running_plugin(ctrd.nri_socket, chain["log"], chain["config"]) as proc:
        yield proc


def _counter(data: Path, name: str, image: str, ann: dict[str, str]) -> Any:
    conf = container_config(name, image, command=["/bin/sh", "-c", COUNT], mounts=[(str(data), "/data", False)],
                            annotations=ann)
    conf.linux.security_context.namespace_options.pid = pb.CONTAINER
    return conf


def _lines(data: Path) -> list[int]:
    return [int(x) for x in (data / "log").read_text().split()] if (data / "log").exists() else []


def _bundle_spec(ctrd: Containerd, cid: str) -> dict[str, Any]:
    ns = "k8s.io"
    for state in Path(ctrd.info["state_dir"]).glob(f"io.containerd.runtime.v2.task/{ns}/{cid}/config.json"):
        return json.loads(state.read_text())
    raise AssertionError(f"no bundle config.json for {cid} under {ctrd.info['state_dir']}")


@pytest.fixture(scope="module")
def checkpoint(ctrd: Containerd, plugin: Any, chain: dict[str, Path], fake: FakeCuda,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A counter created through the chain (so with the injected mount and device), checkpointed with `gpucr
    checkpoint --via-runtime` into ROOT/ck (it goes on running meanwhile), then removed with its pod."""
    data = tmp_path_factory.mktemp("chain-src") / "data"
    data.mkdir()
    with ctrd.pod(handler="chain", annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        cid = c.create_container(pod_id, _counter(data, "count", ctrd.image, {}), cfg)
        c.start_container(cid)
        wait_for(lambda: len(_lines(data)) >= 2, what="the counter to start")
        spec = _bundle_spec(ctrd, cid)
        assert INJECTED in [m["destination"] for m in spec["mounts"]], spec["mounts"]
        r = c.exec_sync(cid, ["/bin/cat", f"{INJECTED}/marker"])
        assert r.exit_code == 0 and b"injected by the chain" in r.stdout, r
        r = subprocess.run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--via-runtime",
                            "--leave-running", "--to", str(chain["root"] / "ck"), "--json", "--address",
                            ctrd.address, "--libcuda", str(fake.lib), "--config", str(chain["config"])],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        hi = max(_lines(data))
        c.stop_container(cid, 0)
    try:
        yield {"name": "ck", "data": data, "hi": hi}
    finally:
        shutil.rmtree(chain["root"] / "ck", ignore_errors=True)


def _conf(route: Path, **values: str) -> Any:
    import contextlib

    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        f = route / "path/front.conf"
        base = f.read_text()
        f.write_text(base + "".join(f"{k} = {v}\n" for k, v in values.items()))
        try:
            yield
        finally:
            f.write_text(base)
    return cm()


def test_direct_restore_through_a_chain_misses_what_it_injects(
        ctrd: Containerd, plugin: Any, chain: dict[str, Path], checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """Without the chained create (``restore_route = direct``: ``chain-runtime restore``, passed through unedited),
    the new container's spec lacks the injected mount the checkpoint has as an external mount: CRIU refuses, the
    start fails, and nothing runs from the checkpoint."""
    data = tmp_path / "data"
    shutil.copytree(checkpoint["data"], data)
    with _conf(chain["route"], restore_route="direct"):
        with ctrd.pod(handler="chain", annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
            cid = c.create_container(pod_id, _counter(data, "direct", ctrd.image,
                                                      {"gpucr.io/restore-from": checkpoint["name"]}), cfg)
            with pytest.raises(CriError) as err:
                c.start_container(cid)
            log = (chain["root"] / ".restore" / cid / "work" / "restore.log")
            text = log.read_text(errors="replace") if log.exists() else ""
            errs = [ln for ln in text.splitlines() if "Error (" in ln]
            # CRIU: the dump's external mount (runc's dump names every bind mount) has no mapping in the restore
            assert "runc restore exited" in str(err.value) and \
                any("No mapping for" in ln and "mountpoint" in ln for ln in errs), (str(err.value), errs)


def test_restore_through_the_chain_gets_its_spec_edits(
        ctrd: Containerd, plugin: Any, chain: dict[str, Path], checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """The default route (the target is not runc): the chain edits the restoring create's spec, its ``runc`` (the
    route's chain/runc) restores into it with the real runc; the counter goes on from the checkpoint, the injected
    mount and device are there, exec works, and the container stops and is removed as usual."""
    data = tmp_path / "data"
    shutil.copytree(checkpoint["data"], data)
    before = len(_lines(data))
    with ctrd.pod(handler="chain", annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
        cid = c.create_container(pod_id, _counter(data, "chained", ctrd.image,
                                                  {"gpucr.io/restore-from": checkpoint["name"]}), cfg)
        try:
            c.start_container(cid)
        except CriError as exc:
            log = chain["root"] / ".restore" / cid / "work" / "restore.log"
            errs = [ln for ln in log.read_text().splitlines() if "Error (" in ln] if log.exists() else []
            raise AssertionError(f"{exc}\n" + "\n".join(errs[-20:]) + f"\n{ctrd.log_tail(20)}") from exc
        wait_for(lambda: len(_lines(data)) >= before + 3, what="the restored counter", timeout=30)
        after = _lines(data)[before:]
        assert after[0] <= checkpoint["hi"] + 1 and after == list(range(after[0], after[0] + len(after))), after
        assert c.container_status(cid)[0].state == 1  # CONTAINER_RUNNING
        spec = _bundle_spec(ctrd, cid)
        assert INJECTED in [m["destination"] for m in spec["mounts"]]
        assert INJECTED_DEV in [d["path"] for d in spec["linux"]["devices"]]
        r = c.exec_sync(cid, ["/bin/cat", f"{INJECTED}/marker"])
        assert r.exit_code == 0 and b"injected by the chain" in r.stdout, r
        r = c.exec_sync(cid, ["/bin/sh", "-c", f"test -c {INJECTED_DEV} && echo chardev"])
        assert r.stdout.strip() == b"chardev", r
        c.stop_container(cid, 0)
        c.remove_container(cid)
    assert not (chain["root"] / ".restore" / cid).exists()
    assert not list((chain["root"] / ".restore-locks").glob("*.lock"))


def test_a_chain_target_that_never_runs_runc_from_path_fails_the_create(
        ctrd: Containerd, plugin: Any, chain: dict[str, Path], checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """A target that creates the container itself (here: runc, forced onto the chained route) would start it
    fresh; the wrapper sees no restore happened, deletes what was created and fails with the fix."""
    data = tmp_path / "data"
    shutil.copytree(checkpoint["data"], data)
    before = len(_lines(data))
    # the runc the chain itself would find: containerd's PATH (the cgroup-v2 leg puts its rig's runc first there)
    real = shutil.which("runc", path=ctrd.info["daemon_path"])
    assert real, "runc not found"
    wrapper = chain["route"] / "bin/runc"
    text = wrapper.read_text()
    target = str(chain["runtime"])
    assert target in text
    wrapper.write_text(text.replace(target, real))
    try:
        with _conf(chain["route"], restore_route="chain"):
            with ctrd.pod(handler="chain", annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
                cid = c.create_container(pod_id, _counter(data, "fresh", ctrd.image,
                                                          {"gpucr.io/restore-from": checkpoint["name"]}), cfg)
                with pytest.raises(CriError, match="without running `runc` from PATH"):
                    c.start_container(cid)
    finally:
        wrapper.write_text(text)
        assert stat.S_IMODE(wrapper.stat().st_mode) == 0o755
    assert len(_lines(data)) == before  # nothing ran fresh


def test_nvidia_legacy_hook_in_the_restoring_spec_is_refused(
        ctrd: Containerd, plugin: Any, chain: dict[str, Path], checkpoint: dict[str, Any], tmp_path: Path) -> None:
    """The chain adds a prestart hook named as NVIDIA's legacy-mode hook (what nvidia-container-runtime in mode
    "legacy" adds at create): the restore is refused before anything is staged, with the fix (CDI); nothing runs,
    no lock is left, the checkpoint is untouched."""
    data = tmp_path / "data"
    shutil.copytree(checkpoint["data"], data)
    before = len(_lines(data))
    edits = Path(chain["runtime"]).with_suffix(".json")
    base = edits.read_text()
    hook = tmp_path / "nvidia-container-runtime-hook"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    edits.write_text(json.dumps({**json.loads(base), "hooks": {"prestart": [
        {"path": str(hook), "args": ["nvidia-container-runtime-hook", "prestart"]}]}}))
    digest = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (chain["root"] / "ck").rglob("*"))
    try:
        with ctrd.pod(handler="chain", annotations={"gpucr.io/checkpoint": "enabled"}) as (c, pod_id, cfg):
            cid = c.create_container(pod_id, _counter(data, "legacy", ctrd.image,
                                                      {"gpucr.io/restore-from": checkpoint["name"]}), cfg)
            with pytest.raises(CriError) as ei:
                c.start_container(cid)
            msg = str(ei.value)
            assert f"container {cid}: restore from checkpoint 'ck' refused at step nvidia-hook" in msg, msg
            assert str(hook) in msg and 'mode to "cdi" or "jit-cdi"' in msg, msg
            assert c.container_status(cid)[0].state != 1
            c.remove_container(cid)
    finally:
        edits.write_text(base)
    assert len(_lines(data)) == before  # nothing ran
    assert not (chain["root"] / ".restore" / cid).exists()
    assert not list((chain["root"] / ".restore-locks").glob("*.lock"))
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in (chain["root"] / "ck").rglob("*")) == digest
