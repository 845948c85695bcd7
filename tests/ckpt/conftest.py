"""Fixtures for the checkpoint-engine tests: the real CRIU binary (a missing one fails loudly) and a workload."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ckpt._workload import Workload
from tests.testenv import CRIU


@pytest.fixture(scope="session")
def criu_binary() -> str:
    """The CRIU that install/deps.sh put under the test root (never one found on PATH)."""
    if os.geteuid() != 0:
        pytest.fail("CRIU tests need root: run them as root (`sudo make test`)", pytrace=False)
    if not os.access(CRIU, os.X_OK):
        pytest.fail(f"no CRIU at {CRIU}: run `make deps` (install/deps.sh)", pytrace=False)
    return str(CRIU)


@pytest.fixture
def workload(tmp_path: Path) -> Iterator[Workload]:
    w = Workload(tmp_path)
    try:
        yield w
    finally:
        w.kill()


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir(mode=0o700)
    return d
