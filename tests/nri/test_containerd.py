"""The stub against real containerd 1.7.24 and 2.1.9 (private instances with NRI), driven through CRI.

NRI fires only for CRI containers, so every scenario creates pods and containers through gpucr's CRI client and
checks the effect where containerd and runc put it: the bundle's config.json, the process env (CRI ExecSync), the
bind-mounted file, the OCI hook's marker file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nri_plugin.cri import CriError
from nri_plugin.nri import Adjustment, container_update, hook, pb
from nri_plugin.ttrpc import Code, TTRPCError
from tests.nri.harness import PluginThread, Recorder, bundle_config
from tests.testenv import REPO, Containerd, wait_for

pytestmark = pytest.mark.integration

SLEEP = ["sleep", "3600"]


@contextlib.contextmanager
def plugin(containerd: Containerd, rec: Recorder, **kw: object):  # type: ignore[no-untyped-def]
    t = PluginThread(rec, containerd.nri_socket, **kw).start()  # type: ignore[arg-type]
    try:
        yield t
    finally:
        t.stop()


def test_register_configure_and_synchronize_existing(containerd: Containerd) -> None:
    with containerd.pod(annotations={"gpucr.test/pre": "existing"}) as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "early", SLEEP)
        rec = Recorder()
        with plugin(containerd, rec) as t:
            [conf] = rec.events("configure")
            assert conf["runtime_name"] == "containerd"
            assert conf["runtime_version"].lstrip("v").startswith(containerd.version), conf
            assert t.stub.runtime_version == conf["runtime_version"]
            if containerd.major_minor >= (2, 0):
                assert t.stub.request_timeout_s == 2.0  # only NRI >= 0.7 sends the timeouts
            sync = wait_for(lambda: rec.events("synchronize"), what="Synchronize")[0]
            assert pod_id in sync["pods"] and cid in sync["containers"]


def test_adjustment_reaches_the_container(containerd: Containerd, tmp_path: Path) -> None:
    """annotation (incl. ~6000 bytes: the plugin's reply spans two mux frames), env, bind mount, OCI hook."""
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    (host_dir / "hello.txt").write_text("from the host\n")
    marker = tmp_path / "hook-marker"
    big = "".join(chr(ord("a") + i % 26) for i in range(6000))
    rec = Recorder()
    rec.adjust["adjusted"] = (Adjustment()
                              .add_annotation("gpucr.test/annotation", "set-by-plugin")
                              .add_annotation("gpucr.test/big", big)
                              .add_env("GPUCR_FROM_PLUGIN", "hello-env")
                              .add_mount(str(host_dir), "/gpucr-shared", options=["rbind", "ro"])
                              .add_hook("create_runtime", hook("/bin/sh", ["sh", "-c", f"echo hooked > {marker}"])))
    assert len(rec.adjust["adjusted"].pb.SerializeToString()) > 6000
    with plugin(containerd, rec), containerd.pod(annotations={"gpucr.test/pod": "pod-value"}) as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "adjusted", SLEEP)
        [ev] = [e for e in rec.events("create_container") if e["container"] == cid]
        assert ev["pod"] == pod_id and ev["pod_annotations"]["gpucr.test/pod"] == "pod-value"
        spec = bundle_config(containerd, cid)
        assert spec["annotations"]["gpucr.test/annotation"] == "set-by-plugin"
        assert spec["annotations"]["gpucr.test/big"] == big
        assert "GPUCR_FROM_PLUGIN=hello-env" in spec["process"]["env"]
        assert c.exec_sync(cid, ["sh", "-c", "echo $GPUCR_FROM_PLUGIN"]).stdout.strip() == b"hello-env"
        assert c.exec_sync(cid, ["cat", "/gpucr-shared/hello.txt"]).stdout == b"from the host\n"
        assert marker.read_text() == "hooked\n"


def test_lifecycle_events_arrive(containerd: Containerd) -> None:
    rec = Recorder()
    with plugin(containerd, rec), containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "life", SLEEP)
        c.stop_container(cid, 1)
        c.remove_container(cid)
        wait_for(lambda: "remove_container" in rec.names(cid), what="RemoveContainer event")
        assert rec.names(cid) == ["create_container", "start_container", "stop_container", "remove_container"]
        assert pod_id in [e["pod"] for e in rec.events("run_pod_sandbox")]


def test_update_containers_request_over_4096_bytes_is_answered(containerd: Containerd) -> None:
    """UpdateContainers from the plugin (conn 2) with a request > 4096 bytes: containerd answers (it silently stops
    answering conn 2 if a frame is over 4096 bytes); the call has its own timeout either way."""
    rec = Recorder()
    with plugin(containerd, rec, update_timeout_s=5.0) as t, containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "upd", SLEEP)
        res = pb.LinuxResources()
        res.cpu.shares.value = 512
        ups = [container_update(cid, res)]
        ups += [container_update(f"gpucr-missing-{i:03d}-{'x' * 64}", res, ignore_failure=True) for i in range(60)]
        size = len(pb.UpdateContainersRequest(update=ups).SerializeToString())
        assert size > 4096
        t0 = time.monotonic()
        try:
            failed = t.call(t.stub.update_containers(ups), 10)
            answer = f"failed={len(failed)}"
            print(f"UpdateContainers ({size} bytes) answered: {answer}")
        except TTRPCError as exc:
            assert exc.code != Code.DEADLINE_EXCEEDED, f"{size}-byte UpdateContainers got no answer: {exc}"
            answer = f"status {exc}"
            print(f"UpdateContainers ({size} bytes) answered: {answer}")
        assert time.monotonic() - t0 < 5, answer
        # and the connection is still good for more calls and events
        t.call(t.stub.update_containers([container_update(cid, res)]), 10)
        cid2 = containerd.run_container(c, pod_id, cfg, "after-upd", SLEEP)
        wait_for(lambda: "start_container" in rec.names(cid2), what="events after UpdateContainers")


def test_handler_error_fails_creation_with_its_message(containerd: Containerd) -> None:
    rec = Recorder()
    rec.fail["doomed"] = "gpucr test refuses container doomed"
    with plugin(containerd, rec) as t, containerd.pod() as (c, pod_id, cfg):
        with pytest.raises(CriError, match="gpucr test refuses container doomed"):
            containerd.run_container(c, pod_id, cfg, "doomed", SLEEP)
        cid = containerd.run_container(c, pod_id, cfg, "fine", SLEEP)
        assert "start_container" in wait_for(lambda: rec.names(cid), what="events for the next container")
        assert t.stub.sessions == 1  # never dropped


def test_slow_handler_answered_before_the_deadline(containerd: Containerd) -> None:
    """A handler slower than containerd's 2 s request timeout: the stub answers with an error at 1.5 s, so creation
    fails visibly (instead of silently losing the adjustment) and the plugin stays connected for the next event."""
    rec = Recorder()
    rec.slow["sluggish"] = 10.0
    rec.adjust["next"] = Adjustment().add_env("GPUCR_NEXT", "1")
    with plugin(containerd, rec) as t, containerd.pod() as (c, pod_id, cfg):
        t0 = time.monotonic()
        with pytest.raises(CriError, match="did not finish within 1.50 s"):
            containerd.run_container(c, pod_id, cfg, "sluggish", SLEEP)
        assert time.monotonic() - t0 < 5
        cid = containerd.run_container(c, pod_id, cfg, "next", SLEEP)
        assert c.exec_sync(cid, ["sh", "-c", "echo $GPUCR_NEXT"]).stdout.strip() == b"1"
        assert t.stub.sessions == 1
        assert "deadline exceeded" not in containerd.log_tail(200).lower()


def _start_cli_plugin(containerd: Containerd, log: Path, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "-v", "plugin", "--logger", "--socket",
                             containerd.nri_socket, "--name", name, "--idx", "60", "--log-file", str(log)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_plugin_then_restarted_resynchronizes(containerd: Containerd, tmp_path: Path) -> None:
    name = f"victim{uuid.uuid4().hex[:4]}"
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    proc = _start_cli_plugin(containerd, log1, name)
    try:
        wait_for(lambda: log1.exists() and "synchronized" in log1.read_text(), what="first plugin to synchronize")
        with containerd.pod() as (c, pod_id, cfg):
            cids = []
            for i in range(3):
                cids.append(containerd.run_container(c, pod_id, cfg, f"k{i}", SLEEP))
                if i == 1:
                    proc.send_signal(signal.SIGKILL)  # mid-stream: events are flowing
            proc.wait(10)
            # containerd keeps serving CRI without the plugin
            cids.append(containerd.run_container(c, pod_id, cfg, "after-kill", SLEEP))
            assert len(c.list_containers(pod_id)) == 4
            proc = _start_cli_plugin(containerd, log2, name)
            text = wait_for(lambda: log2.exists() and "synchronized" in log2.read_text() and log2.read_text(),
                            what="restarted plugin to synchronize")
            assert "registered" in text and "configured by containerd" in text
            for cid in cids:
                assert f"({cid[:12]}) in pod" in text, f"{cid} missing from the re-synchronization"
            assert f"({pod_id[:12]})" in text
    finally:
        proc.kill()
        proc.wait(10)


def test_pre_registered_plugin_launched_by_containerd(pre_registered: tuple[Containerd, Path]) -> None:
    containerd, log = pre_registered
    text = wait_for(lambda: log.exists() and "configured by containerd" in log.read_text() and log.read_text(),
                    what="pre-registered plugin to register and be configured")
    assert "pre-registered" in text and "33-gpucr-pre: registered" in text
    if containerd.major_minor >= (2, 0):
        # observed: 2.1.9 synchronizes plugins it launched; 1.7.24 only configures them (events still flow)
        wait_for(lambda: "synchronized" in log.read_text(), what="pre-registered plugin to synchronize")
    with containerd.pod() as (c, pod_id, cfg):
        cid = containerd.run_container(c, pod_id, cfg, "pre", SLEEP)
        # the adjustment comes from conf.d/33-gpucr-pre.conf, which containerd passes in Configure
        assert c.exec_sync(cid, ["sh", "-c", "echo $GPUCR_PRE"]).stdout.strip() == b"from-conf"
        assert bundle_config(containerd, cid)["annotations"]["gpucr.test/pre"] == "yes"
        c.stop_container(cid, 1)
        wait_for(lambda: f"stop container pre ({cid[:12]})" in log.read_text(), what="StopContainer in the log")


def test_control_one_oversized_mux_frame_loses_the_adjustment(containerd: Containerd,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control for the two-frame write scheme: the same >4096-byte reply sent as ONE mux frame is not
    read by containerd (it drops the plugin and creates the container without the adjustment), which is why
    test_adjustment_reaches_the_container can fail."""
    import nri_plugin.mux.mux as mux_mod
    from nri_plugin.mux import encode_frame

    monkeypatch.setattr(mux_mod, "message_frames", lambda conn_id, msg: [encode_frame(conn_id, msg)])
    rec = Recorder()
    rec.adjust["control"] = Adjustment().add_annotation("gpucr.test/big", "y" * 6000)
    with plugin(containerd, rec) as t, containerd.pod() as (c, pod_id, cfg):
        try:
            cid = containerd.run_container(c, pod_id, cfg, "control", SLEEP)
        except CriError:
            cid = ""
        if cid:
            assert "gpucr.test/big" not in bundle_config(containerd, cid).get("annotations", {})
        wait_for(lambda: t.stub.sessions > 1 or not t.stub.registered.is_set(), what="containerd to drop the plugin")
