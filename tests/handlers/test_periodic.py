"""handlers.periodic without containerd: which containers get timers (creation, a daemon restart's Synchronize),
when they stop, a tick that meets another checkpoint is skipped, and a failing tick is one error line and one
metrics event (real files and locks; the checkpoint itself is covered by tests/front/test_periodic_checkpoints.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from nri_plugin.ckpt.container_lock import held
from nri_plugin.handlers.periodic import Job, PeriodicCheckpoints, PeriodicPolicyPlugin, job_of
from nri_plugin.nri import pb
from nri_plugin.policy import NodeConfig
from tests.fakes.aio import run
from tests.fakes.runtime import container, pod

ASK = {"gpucr.io/checkpoint-interval": "90s", "gpucr.io/checkpoint-keep": "2"}


def _ctr(i: int, state: int = pb.CONTAINER_RUNNING, **ann: str) -> pb.Container:
    c = container(i, "pod0")
    c.state = state  # type: ignore[assignment]
    c.annotations.update(ann)
    return c


def test_job_of_reads_the_annotations() -> None:
    job = job_of(pod(0), _ctr(1, **ASK), NodeConfig())
    assert job == Job("ctr1", "container c1 in pod default/pod-0", "periodic/default/pod-0/c1", 90, 2)
    assert job_of(pod(0), _ctr(2), NodeConfig()) is None
    assert job_of(pod(0), _ctr(3, **ASK), NodeConfig(periodic_checkpoints=False)) is None
    # a node config that changed since the creation: no timer, a warning, never an exception
    assert job_of(pod(0), _ctr(4, **ASK), NodeConfig(checkpoint_interval_min_s=600)) is None


def test_synchronize_rearms_running_containers_and_stop_disarms(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    plugin = PeriodicPolicyPlugin(NodeConfig(state_dir=tmp_path / "state", checkpoint_root=tmp_path / "ck"))

    async def go() -> None:
        await plugin.synchronize([pod(0)], [_ctr(1, **ASK), _ctr(2, pb.CONTAINER_STOPPED, **ASK), _ctr(3)])
        assert sorted(plugin.periodic.tasks) == ["ctr1"]
        task = plugin.periodic.tasks["ctr1"]
        await plugin.post_start_container(pod(0), _ctr(4, **ASK))
        assert sorted(plugin.periodic.tasks) == ["ctr1", "ctr4"]
        await plugin.stop_container(pod(0), _ctr(1))
        await asyncio.sleep(0)
        assert task.cancelled() and sorted(plugin.periodic.tasks) == ["ctr4"]
        await plugin.remove_container(pod(0), _ctr(4))
        assert plugin.periodic.tasks == {}
        await plugin.periodic.close()

    run(go())
    assert ("periodic checkpoints of container c1 in pod default/pod-0 every 90s, 2 kept, in "
            f"{tmp_path / 'ck' / 'periodic/default/pod-0/c1'} (restore the newest with gpucr.io/restore-from: "
            "periodic/default/pod-0/c1/latest)") in caplog.text
    assert "periodic checkpoints of container c1 in pod default/pod-0 stopped: the container stopped" in caplog.text
    assert "c4 in pod default/pod-0 stopped: the container was removed" in caplog.text


def test_a_tick_meeting_another_checkpoint_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    node = NodeConfig(state_dir=tmp_path, checkpoint_root=tmp_path / "ck", containerd_address=tmp_path / "none")
    timers = PeriodicCheckpoints(lambda: node)
    job = Job("ctr1", "container c1 in pod default/p", "periodic/default/p/c1", 30, 2)
    with held(tmp_path, "ctr1"):  # as `gpucr checkpoint CONTAINER` holds it
        assert timers.tick(job) is True
    assert "periodic checkpoint of container c1 in pod default/p skipped: a gpucr checkpoint (pid" in caplog.text
    assert not (tmp_path / "ck").exists() and not (tmp_path / "metrics").exists()


def test_a_failed_tick_is_one_error_line_and_a_metric(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = NodeConfig(state_dir=tmp_path, checkpoint_root=tmp_path / "ck", containerd_address=tmp_path / "none")
    timers = PeriodicCheckpoints(lambda: node)
    job = Job("ctr1", "container c1 in pod default/p", "periodic/default/p/c1", 30, 2)
    assert timers.tick(job) is True  # containerd unreachable: the timer goes on
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage()
    assert errors[0].getMessage().startswith("periodic checkpoint of container c1 in pod default/p (container ctr1) "
                                             "failed at step container-status: ")
    assert errors[0].getMessage().endswith("the container keeps running, the next try is in 30s")
    events = [json.loads(p.read_text()) for p in (tmp_path / "metrics").glob("*.json")]
    assert [(e["operation"], e["path"], e["result"]) for e in events] == [("checkpoint", "periodic", "error")]
