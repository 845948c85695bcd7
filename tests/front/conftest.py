"""Fixtures of the CRIU front's tests: a route directory made by install/front.sh, and a private containerd
(1.7.24 and 2.1.9) whose runc finds the front first on PATH (``GPUCR_CRIU_DIR``), as the product route does through
the runc wrapper. Missing pieces fail loudly; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import testenv
from tests.conftest import VERSIONS

REAL_CRIU = testenv.CRIU
INSTANCE = f"{os.environ.get('GPUCR_INSTANCE') or 'default'}-fr"


class FrontRoute:
    """install/front.sh's route directory: ``bin/runc`` (wrapper), ``path/criu`` (front, a link into the code copy
    ``lib/``), ``path/front.conf``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.criu = root / "path/criu"
        self.runc = root / "bin/runc"
        self.conf = root / "path/front.conf"
        self.log_dir = root / "log"
        self.log = self.log_dir / "criu-front.log"
        self.cache_dir = root / "cache"
        self.base_conf = self.conf.read_text()

    def log_mark(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_since(self, mark: int) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def log_when(self, mark: int, text: str, timeout: float = 10) -> str:
        """The log since ``mark`` once it holds ``text`` (or after ``timeout``): the relaying helper outlives criu
        by a moment, so its last lines may come after the runtime is done."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log_since(mark)) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log

    @contextlib.contextmanager
    def configured(self, **values: str) -> Iterator[None]:
        """front.conf plus ``values`` (e.g. hooks=..., and the hook's own keys) for the duration."""
        self.conf.write_text(self.base_conf + "".join(f"{k} = {v}\n" for k, v in values.items()))
        try:
            yield
        finally:
            self.conf.write_text(self.base_conf)


def front_cuda_hooks() -> str:
    """install/front.sh's default hooks (gpucr's CUDA steps), as its HOOKS line says."""
    return re.search(r"^HOOKS=(\S+)$", (testenv.INSTALL / "front.sh").read_text(), re.M).group(1)  # type: ignore[union-attr]


def make_route(root: Path) -> FrontRoute:
    if root.exists():
        shutil.rmtree(root)
    r = subprocess.run(["bash", str(testenv.INSTALL / "front.sh"), "route", "--dir", str(root), "--real-criu",
                        str(REAL_CRIU), "--log-dir", str(root / "log"), "--hooks", front_cuda_hooks()],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"install/front.sh route failed:\n{r.stderr}", pytrace=False)
    # the front imports only from its root-owned code copy (ROUTE/lib): the tests' recording hooks go there too
    for rel in ("tests/__init__.py", "tests/cgroups.py", "tests/front/__init__.py", "tests/front/recording_hooks.py"):
        dst = root / "lib" / rel
        dst.parent.mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(testenv.REPO / rel, dst)
        dst.chmod(0o644)
    with (root / "path/front.conf").open("a") as f:  # the front's caches: root-only, beside the route, not in /var
        f.write(f"cache_dir = {root / 'cache'}\n")
    return FrontRoute(root)


@pytest.fixture(scope="session")
def front_route() -> Iterator[FrontRoute]:
    if os.geteuid() != 0 or not REAL_CRIU.exists():
        pytest.fail(testenv.deps_problem() or f"{REAL_CRIU} missing: run install/deps.sh", pytrace=False)
    # this session's own (pid): two runs with the same GPUCR_INSTANCE (two unit runs without one) never share it
    route = make_route(testenv.TEST_ROOT / f"front-route-{INSTANCE}-{os.getpid()}")
    try:
        yield route
    finally:
        shutil.rmtree(route.root, ignore_errors=True)


def containerd_sh(cmd: str, version: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``install/containerd.sh CMD VERSION`` with ``env`` (its GPUCR_INSTANCE, the route's dirs) over this process's."""
    return subprocess.run(["bash", str(testenv.INSTALL / "containerd.sh"), cmd, version], capture_output=True,
                          text=True, env={**os.environ, **env})


@contextlib.contextmanager
def private_containerd(version: str, env: dict[str, str]) -> Iterator[testenv.Containerd]:
    """The private containerd ``version`` that install/containerd.sh starts with ``env`` (its ``GPUCR_INSTANCE`` and
    where it finds the front: ``GPUCR_CRIU_DIR``, ``GPUCR_RUNC_DIR``, ...); stopped afterwards, and also when it
    failed to start (the test then fails with containerd.sh's complaint)."""
    r = containerd_sh("start", version, env)
    if r.returncode != 0:
        containerd_sh("stop", version, env)
        pytest.fail(f"install/containerd.sh start {version} (GPUCR_INSTANCE={env['GPUCR_INSTANCE']}) failed:\n"
                    f"{r.stderr}", pytrace=False)
    try:
        yield testenv.Containerd(json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()))
    finally:
        containerd_sh("stop", version, env)


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"containerd-{v}" for v in VERSIONS])
def front_containerd(request: pytest.FixtureRequest, front_route: FrontRoute) -> Iterator[testenv.Containerd]:
    """A private containerd whose shims, runc and (2.1) CRI checkpoint find the front as ``criu``."""
    problem = testenv.deps_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    with private_containerd(request.param,
                            {"GPUCR_INSTANCE": INSTANCE, "GPUCR_CRIU_DIR": str(front_route.criu.parent)}) as ctrd:
        yield ctrd
