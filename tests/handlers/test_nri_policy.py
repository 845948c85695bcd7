"""PolicyPlugin driven through the fake NRI runtime (tests/fakes/runtime.py), no containerd: the adjustment (the
user's org.criu.config taken over, gpucr's OCI hooks added) and the state record, in milliseconds."""

from __future__ import annotations

from pathlib import Path

from nri_plugin.handlers.nri_policy import CRIU_CONFIG_ANNOTATION, PolicyPlugin
from nri_plugin.nri import Stub, pb
from nri_plugin.policy import RecordedPolicy, load_record
from tests.fakes.aio import run, socketpair
from tests.fakes.runtime import FakeRuntime, container, pod


def _ctr(i: int, **annotations: str) -> pb.Container:
    c = container(i, f"pod{i}")
    c.annotations.update(annotations)
    return c


def test_managed_container_is_adjusted_and_recorded(tmp_path: Path) -> None:
    user_conf = tmp_path / "user.conf"
    user_conf.write_text("tcp-close\n")
    cfg = (f'state_dir = "{tmp_path / "state"}"\ncriu_config_dir = "{tmp_path / "criu"}"\n'
           f'runc_criu_config = "{tmp_path / "runc.conf"}"\nhook_path = "/opt/gpucr-hook"\nlock_timeout_ms = 7000\n')

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
        assert conf.parent == tmp_path / "criu" and "tcp-close" in conf.read_text()
        hooks = {k: [(h.path, list(h.args)) for h in getattr(adj.hooks, k)] for k in ("create_runtime", "poststop")}
        assert hooks == {"create_runtime": [("/opt/gpucr-hook", ["/opt/gpucr-hook", "create-runtime", "--state-dir",
                                                                 str(tmp_path / "state")])],
                         "poststop": [("/opt/gpucr-hook", ["/opt/gpucr-hook", "poststop", "--state-dir",
                                                           str(tmp_path / "state")])]}
        rec = load_record(tmp_path / "state", "ctr1")
        assert rec.managed and rec.pod_name == "pod-1" and rec.criu_config == str(conf)
        assert rec.policy == RecordedPolicy(1234, (), {"gpucr.io/checkpoint": "enabled",
                                                       "gpucr.io/lock-timeout": "1234"})
        assert not un.adjust.annotations and not un.adjust.hooks.create_runtime  # unmanaged: untouched
        assert not (tmp_path / "state" / "containers" / "ctr2.json").exists()

    run(main())


def test_user_criu_config_path_with_a_nul_byte_is_unreadable_not_a_crash(tmp_path: Path, caplog) -> None:
    # found by bench/fuzz.py: Path.read_text raised ValueError (not OSError) and the creation failed with a traceback
    import asyncio

    from nri_plugin.policy import NodeConfig

    plugin = PolicyPlugin(NodeConfig(state_dir=tmp_path / "state", criu_config_dir=tmp_path / "criu",
                                     runc_criu_config=tmp_path / "runc.conf", hook_path=""))
    ctr = _ctr(1, **{"gpucr.io/checkpoint": "enabled", CRIU_CONFIG_ANNOTATION: "/etc/criu/x\x00.conf"})
    adj = asyncio.run(plugin.create_container(pod(1), ctr))
    assert adj is not None
    conf = Path(adj.pb.annotations[CRIU_CONFIG_ANNOTATION])
    assert conf.parent == tmp_path / "criu" and "merged with: (nothing)" in conf.read_text()
    assert load_record(tmp_path / "state", "ctr1").criu_config == str(conf)
    assert "cannot read CRIU config" in caplog.text and "using gpucr's options only" in caplog.text
