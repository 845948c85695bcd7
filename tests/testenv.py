"""The real test environment: a private containerd (1.7.24 or 2.1.9) with NRI, runc and CRIU, driven through
``install/containerd.sh`` (the same scripts ``make demo`` uses). Nothing here mocks a component.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nri_plugin.cri import CriClient, container_config, pod_config

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install"
TEST_ROOT = Path(os.environ.get("GPUCR_TEST_ROOT", "/var/lib/gpucr-test"))
CRIU = TEST_ROOT / "bin/criu"
"""The CRIU every test uses (engine, CLI, the front's real_criu, containerd's PATH): install/deps.sh's CRIU 4.2.x."""


def deps_problem() -> str | None:
    """None when install/deps.sh finds everything, else its complaint (tests then fail loudly, never skip)."""
    if os.geteuid() != 0:
        return "integration tests need root (they start containerd, runc and CRIU): run `sudo make test`"
    r = subprocess.run(["bash", str(INSTALL / "deps.sh"), "check"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"test dependencies missing; run `make test` (it runs install/deps.sh):\n{r.stderr.strip()}"
    return None


@dataclass
class Containerd:
    """A running private containerd instance (from its info.json)."""

    info: dict[str, Any]
    version: str = field(init=False)
    address: str = field(init=False)
    nri_socket: str = field(init=False)
    cgroup_parent: str = field(init=False)
    image: str = field(init=False)

    def __post_init__(self) -> None:
        self.version = self.info["version"]
        self.address = self.info["address"]
        self.nri_socket = self.info["nri_socket"]
        self.cgroup_parent = self.info["cgroup_parent"]
        self.image = self.info["busybox_image"]

    @property
    def major_minor(self) -> tuple[int, int]:
        a, b, *_ = self.version.split(".")
        return int(a), int(b)

    def cri(self, timeout_s: float = 60.0) -> CriClient:
        return CriClient(self.address, timeout_s=timeout_s)

    def ctr(self, *args: str, namespace: str = "default", check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run this instance's own ``ctr`` against its socket; raises with ctr's stderr on failure."""
        cmd = [self.info["ctr"], "--address", self.address, "-n", namespace, *args]
        full_env = {**os.environ, "PATH": f"{self.info['bin_dir']}:{os.environ.get('PATH', '')}", **(env or {})}
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}\n"
                                 f"containerd log tail:\n{self.log_tail()}")
        return r

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.info["log"]).read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def remove_restored(self, name: str, ref: str, namespace: str = "default") -> None:
        """Take away what ``ctr c restore`` made (the task and container ``name``) and the checkpoint image ``ref``;
        what is already gone is no error."""
        self.ctr("t", "kill", "-s", "KILL", name, namespace=namespace, check=False)
        time.sleep(0.3)
        self.ctr("t", "rm", "-f", name, namespace=namespace, check=False)
        self.ctr("c", "rm", name, namespace=namespace, check=False)
        self.ctr("images", "rm", "--sync", ref, namespace=namespace, check=False)

    @contextlib.contextmanager
    def pod(self, name: str | None = None, handler: str = "", **kw: Any) -> Iterator[tuple[CriClient, str, Any]]:
        """A CRI pod sandbox (host network, this instance's cgroup parent; ``handler``: a runtime handler other than
        the default), removed afterwards."""
        name = name or f"p-{uuid.uuid4().hex[:8]}"
        with self.pod_of(pod_config(name, cgroup_parent=self.cgroup_parent, **kw), handler) as pod:
            yield pod

    @contextlib.contextmanager
    def pod_of(self, cfg: Any, handler: str = "") -> Iterator[tuple[CriClient, str, Any]]:
        """The CRI pod sandbox of the config ``cfg``; it, its containers and their tasks removed afterwards."""
        with self.cri() as c:
            pod_id = c.run_pod_sandbox(cfg, handler)
            try:
                yield c, pod_id, cfg
            finally:
                for ct in c.list_containers(pod_id):
                    with contextlib.suppress(Exception):
                        c.stop_container(ct.id, 0)
                    with contextlib.suppress(Exception):
                        c.remove_container(ct.id)
                with contextlib.suppress(Exception):
                    c.stop_pod_sandbox(pod_id)
                with contextlib.suppress(Exception):
                    c.remove_pod_sandbox(pod_id)

    def run_container(self, client: CriClient, pod_id: str, pod_cfg: Any, name: str, command: Sequence[str],
                      **kw: Any) -> str:
        cid = client.create_container(pod_id, container_config(name, self.image, command=command, **kw), pod_cfg)
        client.start_container(cid)
        return cid


def start(version: str) -> Containerd:
    r = subprocess.run(["bash", str(INSTALL / "containerd.sh"), "start", version], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"install/containerd.sh start {version} failed:\n{r.stderr}")
    info_path = r.stdout.strip().splitlines()[-1]
    return Containerd(json.loads(Path(info_path).read_text()))


def stop(version: str) -> None:
    subprocess.run(["bash", str(INSTALL / "containerd.sh"), "stop", version], capture_output=True, text=True)


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns a truthy value; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def kill_and_reap(pids: Sequence[int], proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a test workload's ``pids`` (original or restored) and reap them: its launcher ``proc``, and each pid that
    is our child again (a root CRIU restored with rst_sibling)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def one_error(r: subprocess.CompletedProcess[str], status: int | None = 1) -> str:
    """The one ``error:`` line of a command that failed with exit ``status`` (None: any but 0); asserts it is one."""
    assert r.returncode != 0 if status is None else r.returncode == status, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr
    return errors[0]


def node_config(where: Path, **values: Any) -> dict[str, str]:
    """A gpucr node config at ``where/gpucr.toml`` (``checkpoint_root`` defaults to ``where``, ``state_dir`` to
    ``where/state``, ``criu_path`` to the rig's CRIU), as the env that points the CLI at it (``GPUCR_CONFIG``): every
    CLI test confines its checkpoints and its leases to its own tmp dir this way (never the node's /run/gpucr, which
    concurrent sessions share)."""
    values.setdefault("checkpoint_root", str(where))
    values.setdefault("state_dir", str(where / "state"))
    values.setdefault("criu_path", str(CRIU))  # the CRIU the rig's front runs (its version goes into gpucr.json)
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]  # TOML accepts JSON strings, ints and booleans
    path = where / "gpucr.toml"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return {"GPUCR_CONFIG": str(path)}


@contextlib.contextmanager
def running_plugin(nri_socket: str, log: Path, config: Path | None = None,
                   env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """``gpucr -v plugin --socket NRI_SOCKET [--config CONFIG] --log-file LOG`` from the checkout, once its log (begun
    afresh) says it registered and synchronized; terminated afterwards."""
    log.unlink(missing_ok=True)
    conf = ["--config", str(config)] if config is not None else []
    proc = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "-v", "plugin", "--socket", nri_socket, *conf,
                             "--log-file", str(log)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: log.exists() and "synchronized" in log.read_text(),
                 what="gpucr plugin to register and synchronize")
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def installed_hook(root: Path) -> Iterator[Path]:
    """gpucr-hook as a node has it: ``install/hook.sh install --path ROOT/gpucr-hook --prefix ROOT/lib`` (a root-owned
    launcher of a root-owned code copy, never the checkout); uninstalled afterwards."""
    hook = root / "gpucr-hook"
    args = ["--path", str(hook)]
    r = subprocess.run(["bash", str(INSTALL / "hook.sh"), "install", *args, "--prefix", str(root / "lib")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError(f"install/hook.sh install failed: {r.stderr}")
    try:
        yield hook
    finally:
        subprocess.run(["bash", str(INSTALL / "hook.sh"), "uninstall", *args], capture_output=True, text=True)
