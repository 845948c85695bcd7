"""The CRIU front under real containerd (1.7.24 and 2.1.9), runc 1.1.5 and CRIU 4.2.x: the standard checkpoint
commands pass through it transparently, its hooks run at the right moment, and a failing hook aborts the dump with
gpucr's explanation while the container keeps running."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import cgroups
from tests.front.conftest import FrontRoute
from tests.front.recording_hooks import records
from tests.testenv import Containerd, wait_for

pytestmark = pytest.mark.integration

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /data/n; echo $i >> /data/log; sleep 0.2; done"
HOOKS = "tests.front.recording_hooks:make"
#: cgroup parent of the containers the tests run with runc directly (the clean-slate check attributes it to this run)
RUNC_PARENT = "gpucr-test-front" + (f"-{os.environ['GPUCR_INSTANCE']}" if os.environ.get("GPUCR_INSTANCE") else "")


def _n(data: Path) -> int:
    """The counter's last complete value, from the append-only log (DATA/n is rewritten in place, so a read can
    meet it empty)."""
    try:
        text = (data / "log").read_text()
    except FileNotFoundError:
        return 0
    lines = text.split("\n")[:-1]  # the part after the last newline may be a write in progress
    return int(lines[-1]) if lines else 0


@contextlib.contextmanager
def ctr_counter(ctrd: Containerd, tmp_path: Path, *run_args: str, prefix: str = "fr",
                command: Sequence[str] = ("/bin/sh", "-c", COUNTER)) -> Iterator[tuple[str, Path, str]]:
    """A ctr container writing a counter to DATA/n (``command``; ``run_args``: more ``ctr run`` options), once it
    has counted to 2; yields (name, data dir, cgroup path). Killed and removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    data = tmp_path / "data"
    data.mkdir()
    d = ctrd.info["dir"]
    cgroup = f"{ctrd.cgroup_parent}/{name}"
    ctrd.ctr("run", "-d", "--null-io", "--fifo-dir", f"{d}/fifo", "--runc-root", f"{d}/runc-ctr", "--cgroup", cgroup,
             "--mount", f"type=bind,src={data},dst=/data,options=rbind:rw", *run_args, ctrd.image, name, *command)
    try:
        wait_for(lambda: _n(data) >= 2, what="counter to start")
        yield name, data, cgroup
    finally:
        ctrd.ctr("t", "kill", "-s", "KILL", name, check=False)
        time.sleep(0.3)
        ctrd.ctr("t", "rm", "-f", name, check=False)
        ctrd.ctr("c", "rm", name, check=False)


def _advancing(data: Path) -> bool:
    a = _n(data)
    return bool(wait_for(lambda: _n(data) > a, timeout=5, what="counter to advance"))


def test_ctr_task_checkpoint_hook_sees_frozen(front_containerd: Containerd, front_route: FrontRoute,
                                              tmp_path: Path) -> None:
    rec = tmp_path / "hooks.jsonl"
    with ctr_counter(front_containerd, tmp_path) as (name, data, cgroup), \
            front_route.configured(hooks=HOOKS, record_to=str(rec)):
        mark = front_route.log_mark()
        front_containerd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name)
        log = front_route.log_when(mark, " exited")  # the relaying helper outlives criu by a moment
        assert "VERSION from runtime pid" in log and "answered with" in log  # runc's version check, from the cache
        assert "request DUMP" in log and "DUMP success=True" in log and re.search(r"criu pid \d+ exited", log)
        r = records(rec)
        before = [x for x in r if x["point"] == "before_dump"]
        assert len(before) == 1, r
        b = before[0]
        # containerd pauses the task before runc even starts criu (criu-front.md Q3a)
        assert b["freezer"] == "FROZEN" and b["freeze_cgroup"].endswith(cgroup), b
        assert b["leave_running"] is True and b["task_state"].startswith(cgroups.frozen_task_state()), b
        assert [x["name"] for x in r if x["point"] == "notify"][:2] == ["pre-dump", "network-lock"]
        assert r[-1] == {"front_pid": b["front_pid"], "point": "after", "type": "DUMP", "success": True}
        assert _advancing(data)  # resumed after the checkpoint


def test_ctr_checkpoint_thaw_refreeze_then_restore(front_containerd: Containerd, front_route: FrontRoute,
                                                   tmp_path: Path) -> None:
    """What the CUDA engine will do before a dump (thaw, act on live tasks, re-freeze), then a live restore."""
    rec = tmp_path / "hooks.jsonl"
    ref = f"localhost/fr-{uuid.uuid4().hex[:6]}:ckpt"
    ctrd = front_containerd
    with ctr_counter(ctrd, tmp_path) as (name, data, cgroup):
        with front_route.configured(hooks=HOOKS, record_to=str(rec), thaw_for_s="0.6",
                                    counter_file=str(data / "log")):
            lo = _n(data)
            ctrd.ctr("c", "checkpoint", "--task", "--rw", "--image", name, ref)
            window = (lo, _n(data))
        b = next(x for x in records(rec) if x["point"] == "before_dump")
        assert b["freezer"] == "FROZEN" and b["refrozen"] == "FROZEN", b
        assert b["thawed_task_state"][0] in "SR", b
        was, now = (int(x) for x in b["counter_while_thawed"])
        assert now > was, b  # the tasks really ran while the hook held the dump
        with front_route.configured(hooks=HOOKS, record_to=str(rec)):
            log = restore_and_check(ctrd, front_route, name, data, ref, window)
        assert "request RESTORE" in log and "RESTORE success=True restore.pid=" in log
        assert "notify post-resume" in log
        notes = [(x["name"], x["task_state"]) for x in records(rec) if x["point"] == "notify" and x["type"] == "RESTORE"]
        # post-resume is the last notify and the restored init runs then (criu-front.md Q4a/b)
        assert notes[-1][0] == "post-resume", notes
        assert records(rec)[-1]["point"] == "after" and records(rec)[-1]["success"] is True
        # runc moved the front into the container's cgroups before sending RESTORE (pitfall 3)
        restore_line = next(ln for ln in log.splitlines() if "request RESTORE" in ln)
        assert restore_line.endswith(f"front_cgroup={cgroup}"), restore_line


def restore_and_check(ctrd: Containerd, route: FrontRoute, name: str, data: Path, ref: str,
                      window: tuple[int, int]) -> str:
    """Kill and remove the container, `ctr c restore --live --rw` it, check the counter continues from the
    checkpoint (its value was in ``window``: read just before and just after the checkpoint); returns the front's
    log lines of the restore."""
    ctrd.ctr("t", "kill", "-s", "KILL", name)
    wait_for(lambda: name not in ctrd.ctr("t", "ls").stdout or "STOPPED" in ctrd.ctr("t", "ls").stdout,
             what="task to stop")
    ctrd.ctr("t", "rm", name)
    ctrd.ctr("c", "rm", name)
    lines_before = len((data / "log").read_text().split())
    mark = route.log_mark()
    try:
        ctrd.ctr("c", "restore", "--live", "--rw", name, ref)
        wait_for(lambda: len((data / "log").read_text().split()) >= lines_before + 3, what="restored counter")
        after = [int(x) for x in (data / "log").read_text().split()[lines_before:]]
        # memory came back, not a fresh start: the first value written is the checkpointed one plus one
        assert window[0] <= after[0] - 1 <= window[1] + 1, (window, after)
        assert after == list(range(after[0], after[0] + len(after)))
        return route.log_since(mark)
    finally:
        ctrd.ctr("images", "rm", "--sync", ref, check=False)


def test_unmanaged_checkpoint_restore_is_handed_to_criu(front_containerd: Containerd, front_route: FrontRoute,
                                                        tmp_path: Path) -> None:
    """No hooks want the session: the front execs the real criu on runc's own socket (nothing relayed)."""
    ref = f"localhost/fr-{uuid.uuid4().hex[:6]}:ckpt"
    with ctr_counter(front_containerd, tmp_path) as (name, data, _cgroup):
        mark = front_route.log_mark()
        lo = _n(data)
        front_containerd.ctr("c", "checkpoint", "--task", "--rw", "--image", name, ref)
        window = (lo, _n(data))
        log = front_route.log_since(mark)
        assert "VERSION from runtime pid" in log and "DUMP from runtime pid" in log and "no gpucr work" in log
        assert "request DUMP" not in log  # not relayed
        log = restore_and_check(front_containerd, front_route, name, data, ref, window)
        assert "RESTORE from runtime pid" in log and "no gpucr work, handing swrk 3" in log


def test_failing_hook_aborts_dump_and_container_keeps_running(front_containerd: Containerd,
                                                              front_route: FrontRoute, tmp_path: Path) -> None:
    rec = tmp_path / "hooks.jsonl"
    text = "test hook refused: cuda lock of this container timed out"
    with ctr_counter(front_containerd, tmp_path) as (name, data, cgroup), \
            front_route.configured(hooks=HOOKS, record_to=str(rec), fail_before_dump=text):
        mark = front_route.log_mark()
        r = front_containerd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name, check=False)
        assert r.returncode != 0
        log = front_route.log_since(mark)
        assert f"DUMP refused before criu ran: gpucr criu front: before DUMP of pid" in log and text in log
        assert "started /" not in log.split("request DUMP", 1)[1]  # criu never ran for the DUMP
        out = r.stdout + r.stderr
        assert "criu failed" in out and "errno 125" in out, out
        # the runtime points at CRIU's log; gpucr's explanation is in it (containerd copies it to criu-dump.log)
        dump_logs = list(Path(front_containerd.info["state_dir"]).rglob("criu-dump.log"))
        assert any(text in p.read_text() for p in dump_logs), (out, dump_logs)
        assert "RUNNING" in front_containerd.ctr("t", "ls").stdout
        assert cgroups.state(cgroups.at(cgroup)) == "THAWED"
        assert _advancing(data)


def test_failing_notify_hook_aborts_dump_mid_way(front_containerd: Containerd, front_route: FrontRoute,
                                                 tmp_path: Path) -> None:
    """A hook failing at network-lock (CRIU has seized the tasks): CRIU is told the notify failed, aborts and
    releases the tasks; the runtime gets the failure with gpucr's explanation; the container keeps running."""
    rec = tmp_path / "hooks.jsonl"
    with ctr_counter(front_containerd, tmp_path) as (name, data, cgroup), \
            front_route.configured(hooks=HOOKS, record_to=str(rec), fail_at_notify="network-lock"):
        mark = front_route.log_mark()
        r = front_containerd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name, check=False)
        # runc 1.1 names the last request it sent (our NOTIFY answer), and shows only errno and the log path
        assert r.returncode != 0 and "criu failed: type NOTIFY errno 125" in r.stderr, r.stderr
        dump_log = Path(r.stderr.split("path= ", 1)[1].split(":", 1)[0].strip())
        assert "Error (gpucr criu front): at network-lock of DUMP: test hook refused" in dump_log.read_text()
        log = front_route.log_since(mark)
        assert "notify network-lock failed: gpucr criu front: at network-lock of DUMP: test hook refused" in log
        assert "turned into a failure: gpucr criu front: at network-lock of DUMP" in log
        # CRIU rolls back: it still unlocks the network (that notify reaches runc as usual), then answers failure
        assert [x["name"] for x in records(rec) if x["point"] == "notify"] == ["pre-dump", "network-lock",
                                                                               "network-unlock"]
        assert "RUNNING" in front_containerd.ctr("t", "ls").stdout
        assert cgroups.state(cgroups.at(cgroup)) == "THAWED"
        assert _advancing(data)


@contextlib.contextmanager
def _subreaper(cgroup: str) -> Iterator[list[int]]:
    """Make this process the child subreaper while a runc test runs: the containers' processes, orphaned when runc
    exits, come to us instead of this machine's PID 1, which reaps slowly (zombies pin their cgroups). On exit,
    reap whatever was adopted and remove the container's cgroup. Yields a list for the inits' pids (informative)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    pids: list[int] = []
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        yield pids
    finally:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG) != (0, 0):
                    pass
            if _remove_cgroup(cgroup, quiet=True) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)
        _remove_cgroup(cgroup)


def _runc_pid(runc: list[str], name: str) -> int:
    r = subprocess.run([*runc, "state", name], capture_output=True, text=True, check=True)
    return int(json.loads(r.stdout)["pid"])


def _remove_cgroup(cgroup: str, quiet: bool = False) -> bool:
    """rmdir the runc test container's cgroup in every hierarchy, and the shared parent once empty; True when gone.
    Raises (unless ``quiet``) naming what is left."""
    left = cgroups.remove(cgroup, parent_too=True)
    if left and not quiet:
        raise AssertionError(f"cgroups left behind: {left}")
    return not left


def _bundle(root: Path, prefix: str) -> tuple[str, Path, str, Path]:
    """A runc container ``PREFIX-XXXXXX`` of the counter (busybox rootfs; its volume ``root/data`` at /data) in its
    own cgroup under RUNC_PARENT: its name, volume, cgroup path and bundle ``root/bundle``."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    data = root / "data"
    data.mkdir()
    cgroup = f"/{RUNC_PARENT}/{name}"
    bundle = root / "bundle"
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "data").mkdir()
    subprocess.run(["cp", "/bin/busybox", str(rootfs / "bin/busybox")], check=True)
    for a in ("sh", "sleep", "echo"):
        (rootfs / "bin" / a).symlink_to("busybox")
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["/bin/sh", "-c", COUNTER]
    spec["root"]["readonly"] = False
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "rw"]})
    spec["linux"]["cgroupsPath"] = cgroup
    (bundle / "config.json").write_text(json.dumps(spec))
    return name, data, cgroup, bundle


def test_runc_direct_through_the_wrapper(front_route: FrontRoute, tmp_path: Path) -> None:
    """`runc checkpoint` / `runc restore -d` run through the route's runc wrapper (BinaryName), cgroup THAWED."""
    name, data, cgroup, bundle = _bundle(tmp_path, "fr-runc")
    runc = [str(front_route.runc), "--root", str(tmp_path / "runc-root")]
    rec = tmp_path / "hooks.jsonl"
    images, work = tmp_path / "images", tmp_path / "work"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*runc, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (args, r.stderr, (work / "dump.log").read_text()[-1500:] if (work / "dump.log").exists() else "")
        return r

    with _subreaper(cgroup) as inits:
        _runc_direct(runc, name, bundle, data, images, work, rec, front_route, inits, run)


def _runc_direct(runc: list[str], name: str, bundle: Path, data: Path, images: Path, work: Path, rec: Path,
                 front_route: FrontRoute, inits: list[int], run: Any) -> None:
    try:
        subprocess.run([*runc, "run", "-d", "--bundle", str(bundle), name], check=True, timeout=60,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        inits.append(_runc_pid(runc, name))
        wait_for(lambda: _n(data) >= 2, what="runc counter")
        mark = front_route.log_mark()
        lo = _n(data)
        with front_route.configured(hooks=HOOKS, record_to=str(rec)):
            run("checkpoint", "--image-path", str(images), "--work-path", str(work), name)
        hi = _n(data)  # runc checkpoint without --leave-running stops the task: the last value is final
        b = next(x for x in records(rec) if x["point"] == "before_dump")
        assert b["freezer"] == "THAWED" and b["leave_running"] is False, b  # only a direct runc arrives thawed
        log = front_route.log_since(mark)
        assert "request DUMP" in log and "DUMP success=True" in log
        lines_before = len((data / "log").read_text().split())
        with front_route.configured(hooks=HOOKS, record_to=str(rec)):
            run("restore", "-d", "--image-path", str(images), "--work-path", str(work), "--bundle", str(bundle), name)
        inits.append(_runc_pid(runc, name))
        wait_for(lambda: len((data / "log").read_text().split()) >= lines_before + 3, what="restored runc counter")
        after = [int(x) for x in (data / "log").read_text().split()[lines_before:]]
        assert lo <= after[0] - 1 <= hi + 1, (lo, hi, after)
        assert "RESTORE success=True" in front_route.log_since(mark)
    finally:
        subprocess.run([*runc, "kill", "--all", name, "KILL"], capture_output=True)
        time.sleep(0.3)
        subprocess.run([*runc, "delete", "-f", name], capture_output=True)


@pytest.mark.containerd(min="2.0")  # 1.7 does not implement it: tests/containerd/test_tasks.py
@pytest.mark.parametrize("mode", ["handoff", "hooks"])
def test_cri_checkpoint_container(front_containerd: Containerd, front_route: FrontRoute, tmp_path: Path,
                                  mode: str) -> None:
    """CRI CheckpointContainer: 2.x checks criu on the daemon's PATH, pauses the container, then runs runc (through
    the front; with hooks the DUMP is relayed and the hook sees the cgroup FROZEN)."""
    ctrd = front_containerd
    rec = tmp_path / "hooks.jsonl"
    conf = {"hooks": HOOKS, "record_to": str(rec)} if mode == "hooks" else {}
    with ctrd.pod() as (c, pod_id, cfg), front_route.configured(**conf):
        cid = ctrd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); "
                                                             "echo $i > /tmp/n; sleep 0.2; done"])
        archive = tmp_path / "ckpt.tar"
        mark = front_route.log_mark()
        c.checkpoint_container(cid, str(archive))
        with tarfile.open(archive) as t:
            names = t.getnames()
        assert any(n.endswith("pstree.img") for n in names) and "spec.dump" in names, names[:20]
        log = front_route.log_since(mark)
        daemon = str(ctrd.info["pid"])
        assert f"VERSION from runtime pid {daemon}: answered with" in log  # containerd's own criu check
        if mode == "hooks":
            assert "request DUMP" in log and "DUMP success=True" in log
            b = next(x for x in records(rec) if x["point"] == "before_dump")
            assert b["freezer"] == "FROZEN" and b["leave_running"] is True, b
        else:
            assert "DUMP from runtime pid" in log and "no gpucr work, handing swrk 3" in log
        n1 = c.exec_sync(cid, ["cat", "/tmp/n"]).stdout.strip()
        wait_for(lambda: c.exec_sync(cid, ["cat", "/tmp/n"]).stdout.strip() != n1, what="container to keep running")


class ConsoleSocket:
    """runc's --console-socket peer: receives pty master fds (SCM_RIGHTS) and keeps draining them."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(4)
        self.srv.settimeout(60)
        self.masters: list[int] = []
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import array
        import socket
        while not self._stop:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with conn:
                fds = array.array("i")
                _, anc, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(4 * fds.itemsize))
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
                self.masters.extend(fds)

    def close(self) -> None:
        self._stop = True
        self.srv.close()
        for fd in self.masters:
            with contextlib.suppress(OSError):
                os.close(fd)


def test_terminal_container_pty_master_crosses_the_relay(front_route: FrontRoute, tmp_path: Path) -> None:
    """On RESTORE of a terminal container CRIU sends the new pty master with the orphan-pts-master notify
    (SCM_RIGHTS); the relay must pass the fd on to runc, which hands it to the console socket."""
    name, data, cgroup, bundle = _bundle(tmp_path, "fr-tty")
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = True
    (bundle / "config.json").write_text(json.dumps(spec))
    runc = [str(front_route.runc), "--root", str(tmp_path / "runc-root")]
    images, work, rec = tmp_path / "images", tmp_path / "work", tmp_path / "hooks.jsonl"
    console = ConsoleSocket(tmp_path / "console.sock")

    def run(*args: str) -> None:
        r = subprocess.run([*runc, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        log = next((p.read_text()[-1500:] for p in (work / "dump.log", work / "restore.log") if p.exists()), "")
        assert r.returncode == 0, (args, r.stderr, log)

    with _subreaper(cgroup) as inits:
        try:
            run("run", "-d", "--console-socket", str(console.path), "--bundle", str(bundle), name)
            wait_for(lambda: len(console.masters) == 1, what="pty master from runc run")
            inits.append(_runc_pid(runc, name))
            wait_for(lambda: _n(data) >= 2, what="tty counter")
            with front_route.configured(hooks=HOOKS, record_to=str(rec)):
                lo = _n(data)
                run("checkpoint", "--image-path", str(images), "--work-path", str(work), name)
                hi = _n(data)
                lines_before = len((data / "log").read_text().split())
                mark = front_route.log_mark()
                run("restore", "-d", "--console-socket", str(console.path), "--image-path", str(images), "--work-path",
                    str(work), "--bundle", str(bundle), name)
            wait_for(lambda: len(console.masters) == 2, what="pty master from the restore (through the relay)")
            inits.append(_runc_pid(runc, name))
            assert os.isatty(console.masters[1])
            log = front_route.log_since(mark)
            assert "notify orphan-pts-master" in log and "RESTORE success=True" in log
            wait_for(lambda: len((data / "log").read_text().split()) >= lines_before + 3, what="restored tty counter")
            after = [int(x) for x in (data / "log").read_text().split()[lines_before:]]
            assert lo <= after[0] - 1 <= hi + 1, (lo, hi, after)
        finally:
            subprocess.run([*runc, "kill", "--all", name, "KILL"], capture_output=True)
            time.sleep(0.3)
            subprocess.run([*runc, "delete", "-f", name], capture_output=True)
            console.close()
