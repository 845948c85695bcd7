"""Session fixtures: a real private containerd per version (1.7.24 and 2.1.9), torn down even when tests fail.

``GPUCR_TEST_CONTAINERD=2.1.9`` narrows the versions for a quick local run; CI runs both. A missing dependency
fails the integration tests loudly (it is never a skip). The log header and the end of the summary name the leg
(cgroup version as this process sees it, containerd versions); the clean-slate check (tests/slate.py) fails the run
when the suite left mounts, processes, cgroups, sockets or containerd dirs behind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import cgroups, slate, testenv

VERSIONS = [v for v in os.environ.get("GPUCR_TEST_CONTAINERD", "1.7.24,2.1.9").split(",") if v]
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
