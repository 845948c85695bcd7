"""PolicyPlugin driven through the fake NRI runtime (tests/fakes/runtime.py), no containerd: the adjustment (the
user's org.criu.config taken over, gpucr's OCI hooks added) and the state record, in milliseconds."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nri_plugin.handlers.nri_policy import CRIU_CONFIG_ANNOTATION, PolicyPlugin
from nri_plugin.nri import Stub, pb
from nri_plugin.policy import RecordedPolicy, load_record
from tests.fakes.aio import run, socketpair
from tests.fakes.runtime import FakeRuntime, container, pod
from tests.roottmp import root_tmp  # noqa: F401 (fixture)


def _ctr(i: int, **annotations: str) -> pb.Container:
    c = container(i, f"pod{i}")
    c.annotations.update(annotations)
    return c


def _hook(root_tmp: Path) -> Path:
    """A root-owned executable standing for the installed gpucr-hook (never run here: no runtime)."""
    h = root_tmp / "libexec/gpucr-hook"
    h.parent.mkdir(exist_ok=True)
    h.write_text("#!/bin/sh\n")
    h.chmod(0o755)
    return h


def _config(root_tmp: Path, hook: Path | str, **extra: str) -> str:
    keys = {"state_dir": root_tmp / "state", "criu_config_dir": root_tmp / "criu",
            "runc_criu_config": root_tmp / "runc.conf", "hook_path": hook, **extra}
    return "".join(f'{k} = "{v}"\n' for k, v in keys.items())


def drive(config: str, *creates: tuple[pb.PodSandbox, pb.Container],
          between: Callable[[], None] | None = None) -> list[pb.CreateContainerResponse]:
    """PolicyPlugin configured with ``config`` through the fake runtime, answering each CreateContainer (``between``
    runs after the first one)."""
    import asyncio

    async def main() -> list[pb.CreateContainerResponse]:
        rt = FakeRuntime(config=config)
        a, b = socketpair()
        stub = Stub(PolicyPlugin(), name="gpucr", idx="10", connection=a)
        await rt.attach(b)
        task = asyncio.get_running_loop().create_task(stub.run())
        await asyncio.wait_for(rt.synchronized.wait(), 5)
        out = []
        for i, (p, c) in enumerate(creates):
            if i == 1 and between is not None:
                between()
            out.append(await rt.create_container(p, c))
        rt.close()
        await asyncio.wait_for(task, 5)
        await rt.aclose()
        return out

    return run(main())


def test_managed_container_is_adjusted_and_recorded(root_tmp: Path) -> None:
    user_conf = root_tmp / "user.conf"
    user_conf.write_text("tcp-close\n")
    hook = _hook(root_tmp)
    cfg = (f'state_dir = "{root_tmp / "state"}"\ncriu_config_dir = "{root_tmp / "criu"}"\n'
           f'runc_criu_config = "{root_tmp / "runc.conf"}"\nhook_path = "{hook}"\nlock_timeout_ms = 7000\n')

    async def main() -> None:
        rt = FakeRuntime(config=cfg)
        a, b = socketpair()
        plugin = PolicyPlugin()
        stub = Stub(plugin, name="gpucr", idx="10", connection=a)
        await rt.attach(b)
        import asyncio
        task = asyncio.get_running_loop().create_task(stub.run())
        await asyncio.wait_for(rt.synchronized.wait(), 5)
        resp = await rt.create_container(pod(1), _ctr(1, **{"gpucr.io/checkpoint": "enabled",
                                                            "gpucr.io/lock-timeout": "1234",
                                                            CRIU_CONFIG_ANNOTATION: str(user_conf)}))
        un = await rt.create_container(pod(2), _ctr(2))
        rt.close()
        await asyncio.wait_for(task, 5)
        await rt.aclose()

        adj = resp.adjust
        assert adj.annotations["-" + CRIU_CONFIG_ANNOTATION] == ""  # the user's entry taken over ...
        conf = Path(adj.annotations[CRIU_CONFIG_ANNOTATION])  # ... and its content merged into gpucr's
        assert conf.parent == root_tmp / "criu" and "tcp-close" in conf.read_text()
        hooks = {k: [(h.path, list(h.args)) for h in getattr(adj.hooks, k)] for k in ("create_runtime", "poststop")}
        h = str(hook)
        assert hooks == {"create_runtime": [(h, [h, "create-runtime", "--state-dir", str(root_tmp / "state")])],
                         "poststop": [(h, [h, "poststop", "--state-dir", str(root_tmp / "state")])]}
        rec = load_record(root_tmp / "state", "ctr1")
        assert rec.managed and rec.pod_name == "pod-1" and rec.criu_config == str(conf)
        assert rec.policy == RecordedPolicy(1234, (), {"gpucr.io/checkpoint": "enabled",
                                                       "gpucr.io/lock-timeout": "1234"})
        assert not un.adjust.annotations and not un.adjust.hooks.create_runtime  # unmanaged: untouched
        assert not (root_tmp / "state" / "containers" / "ctr2.json").exists()

    run(main())


MANAGED = {"gpucr.io/checkpoint": "enabled"}


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_missing_hook_one_error_no_hooks_container_still_managed(root_tmp: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The default node on a node without gpucr-hook installed: one error naming the hook and the fix at Configure,
    then managed containers get gpucr's CRIU config and record but no hooks (runc would fail to run them); once the
    hook is installed, the next managed container gets them, without a restart."""
    caplog.set_level(logging.INFO)
    missing = root_tmp / "libexec/gpucr-hook"
    first, second, third = drive(_config(root_tmp, missing), (pod(1), _ctr(1, **MANAGED)), (pod(2), _ctr(2, **MANAGED)),
                                 (pod(3), _ctr(3, **MANAGED)), between=lambda: _hook(root_tmp))
    (err,) = _errors(caplog)
    assert err.startswith(f"hook_path {missing} is unusable: {missing} does not exist; gpucr injects no OCI hooks")
    assert "fix: install it with `install/hook.sh install`" in err
    adj = first.adjust
    assert not adj.hooks.create_runtime and not adj.hooks.poststop
    assert Path(adj.annotations[CRIU_CONFIG_ANNOTATION]).parent == root_tmp / "criu"
    rec = load_record(root_tmp / "state", "ctr1")
    assert rec.managed and rec.pid == 0 and rec.cgroup == ""  # the front finds the container from /proc
    for later in (second, third):  # installed before the second creation: noticed there
        assert [h.path for h in later.adjust.hooks.create_runtime] == [str(missing)]
    assert any(r.getMessage() == f"resolved: hook_path {missing} is unusable: {missing} does not exist"
               for r in caplog.records)
    assert len(_errors(caplog)) == 1


@pytest.mark.parametrize("key", ["state_dir", "criu_config_dir", "runc_criu_config"])
def test_unsafe_node_path_one_error_and_safe_behaviour(root_tmp: Path, caplog: pytest.LogCaptureFixture,
                                                       key: str) -> None:
    """A world-writable place for the state records, the CRIU configs or the node's runc.conf: reported once, never
    used (others could change what root trusts), and the managed container still starts."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (path ownership)", pytrace=False)
    caplog.set_level(logging.INFO)
    shared = root_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    bad = shared / key
    if key == "runc_criu_config":
        bad.write_text("action-script /tmp/evil\n")
    resp, again = drive(_config(root_tmp, _hook(root_tmp), **{key: str(bad)}), (pod(1), _ctr(1, **MANAGED)),
                        (pod(2), _ctr(2, **MANAGED)))
    (err,) = _errors(caplog)
    assert err.startswith(f"{key} {bad} is unusable: {shared} is group- or world-writable (mode 0777); ")
    assert f"fix: chown root:root {shared}; chmod go-w {shared}" in err
    assert not bad.exists() or key == "runc_criu_config"  # nothing written there
    adj = resp.adjust
    conf = adj.annotations.get(CRIU_CONFIG_ANNOTATION)
    recorded = (root_tmp / "state" / "containers" / "ctr1.json").exists()
    if key == "state_dir":
        assert not adj.hooks.create_runtime and conf and not recorded
    elif key == "criu_config_dir":
        assert conf is None and adj.hooks.create_runtime and recorded
    else:
        assert conf and "action-script" not in Path(conf).read_text() and adj.hooks.create_runtime and recorded
    assert again.adjust.annotations.get(CRIU_CONFIG_ANNOTATION) == conf


def test_user_criu_config_path_with_a_nul_byte_is_unreadable_not_a_crash(root_tmp: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    # found by bench/fuzz.py: Path.read_text raised ValueError (not OSError) and the creation failed with a traceback
    caplog.set_level(logging.INFO)
    (resp,) = drive(_config(root_tmp, _hook(root_tmp)),
                    (pod(1), _ctr(1, **MANAGED, **{CRIU_CONFIG_ANNOTATION: "/etc/criu/x\x00.conf"})))
    conf = Path(resp.adjust.annotations[CRIU_CONFIG_ANNOTATION])
    assert conf.parent == root_tmp / "criu" and "merged with: (nothing)" in conf.read_text()
    assert load_record(root_tmp / "state", "ctr1").criu_config == str(conf)
    assert "cannot read CRIU config" in caplog.text and "using gpucr's options only" in caplog.text
