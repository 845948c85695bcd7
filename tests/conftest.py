"""Session fixtures: a real private containerd per version (1.7.24 and 2.1.9), torn down even when tests fail.

``GPUCR_TEST_CONTAINERD=2.1.9`` narrows the versions for a quick local run; CI runs both. A missing dependency
fails the integration tests loudly (it is never a skip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import testenv

VERSIONS = [v for v in os.environ.get("GPUCR_TEST_CONTAINERD", "1.7.24,2.1.9").split(",") if v]


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
