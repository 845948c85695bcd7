"""Session fixtures: a real private containerd per version (1.7.24 and 2.1.9), torn down even when tests fail.

``GPUCR_TEST_CONTAINERD=2.1.9`` narrows the versions for a quick local run; CI runs both. A missing dependency
fails the integration tests loudly (it is never a skip). The log header and the end of the summary name the leg
(cgroup version as this process sees it, containerd versions); the clean-slate check (tests/slate.py) fails the run
when the suite left mounts, processes, cgroups, sockets or containerd dirs behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import cgroups, slate, testenv

VERSIONS = [v for v in os.environ.get("GPUCR_TEST_CONTAINERD", "1.7.24,2.1.9").split(",") if v]
#: the fixtures that stand for one containerd version each
VERSION_FIXTURES = ("containerd", "front_containerd", "ctrd")


def _mm(version: str) -> tuple[int, int]:
    a, b, *_ = version.split(".")
    return int(a), int(b)


def versions_for(marker: pytest.Mark | None) -> list[str]:
    """The containerd versions a case marked ``@pytest.mark.containerd(min=..., below=...)`` can run on."""
    if marker is None:
        return VERSIONS
    lo, hi = marker.kwargs.get("min"), marker.kwargs.get("below")
    return [v for v in VERSIONS if (lo is None or _mm(v) >= _mm(lo)) and (hi is None or _mm(v) < _mm(hi))]


@pytest.hookimpl(tryfirst=True)  # before the fixtures' own params are applied: the marker takes precedence
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A case marked ``containerd(...)`` is generated only for the versions it can run on, so a containerd-1.7
    case never passes by asserting "unimplemented" and returning: what cannot run on a version does not exist there."""
    marker = metafunc.definition.get_closest_marker("containerd")
    if marker is None:
        return
    for name in VERSION_FIXTURES:
        vs = versions_for(marker)
        if name in metafunc.fixturenames and vs:
            metafunc.definition.add_marker(pytest.mark.parametrize(
                name, vs, indirect=True, ids=[f"containerd-{v}" for v in vs]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A marked case with no version left in a narrowed run (``GPUCR_TEST_CONTAINERD``) is deselected, never skipped."""
    drop = [i for i in items if i.get_closest_marker("containerd") is not None
            and not versions_for(i.get_closest_marker("containerd"))]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [i for i in items if i not in drop]


SNAPSHOT = pytest.StashKey[slate.Snapshot]()
LEFTOVERS = pytest.StashKey[list[str]]()


def leg() -> str:
    """Which host this run's integration tests meet: the cgroup view and the containerd versions."""
    return f"gpucr leg: {cgroups.describe()}; containerd {', '.join(VERSIONS)}"


def pytest_report_header(config: pytest.Config) -> str:
    return leg()


@pytest.fixture(scope="session", autouse=True)
def clean_slate_snapshot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """What the host looks like before the first test (compared at session end by pytest_sessionfinish)."""
    request.config.stash[SNAPSHOT] = slate.Snapshot.take(testenv.TEST_ROOT, tmp_path_factory.getbasetemp(),
                                                         os.environ.get("GPUCR_INSTANCE") or None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Runs after every fixture is torn down: anything the suite created and left behind fails the run."""
    snap = session.config.stash.get(SNAPSHOT, None)
    if snap is None:
        return
    left = snap.leftovers()
    session.config.stash[LEFTOVERS] = left
    if left and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left = config.stash.get(LEFTOVERS, None)
    if left is None:
        return
    terminalreporter.section("gpucr clean slate")
    if left:
        terminalreporter.write_line(f"FAILED: the suite left {len(left)} thing(s) behind:", red=True)
        for line in left:
            terminalreporter.write_line(f"  {line}")
    else:
        terminalreporter.write_line("passed: no mounts, processes, cgroups, shim/NRI sockets or containerd dirs left "
                                    "behind (compared with the start of the session)", green=True)
    terminalreporter.write_line(leg())


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """Tests that call the CLI in-process get its stderr handler on the root logger, bound to pytest's capture of
    that test; without this, later tests' log records go to a closed stream ("Logging error" noise in the log)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def root_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory only root can change (0700, in ``$GPUCR_TEST_ROOT/tmp``), removed afterwards: the place for
    what an install writes and the CRIU front or the OCI hook then runs from or reads (routes, code copies, front
    configs). Not ``tmp_path``: the front, and so the install, refuse anything below a world-writable /tmp."""
    if not testenv.TEST_ROOT.is_dir():
        pytest.fail(testenv.deps_problem() or f"{testenv.TEST_ROOT} is missing: run install/deps.sh", pytrace=False)
    base = testenv.TEST_ROOT / "tmp"
    base.mkdir(mode=0o700, exist_ok=True)
    instance = os.environ.get("GPUCR_INSTANCE") or "default"
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:40]  # paths the route's scripts need not quote
    d = Path(tempfile.mkdtemp(prefix=f"{instance}-{name}-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", params=VERSIONS, ids=[f"containerd-{v}" for v in VERSIONS])
def containerd(request: pytest.FixtureRequest) -> Iterator[testenv.Containerd]:
    problem = testenv.deps_problem()
    if problem:
        pytest.fail(problem, pytrace=False)
    version = request.param
    try:
        instance = testenv.start(version)
    except RuntimeError as exc:
        testenv.stop(version)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield instance
    finally:
        testenv.stop(version)
