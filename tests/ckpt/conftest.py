"""Fixtures for the checkpoint-engine tests: the real CRIU binary (a missing one fails loudly) and a workload."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ckpt._workload import Workload
from tests.testenv import TEST_ROOT


@pytest.fixture(scope="session")
def criu_binary() -> str:
    """The CRIU >= 4.1 that install/deps.sh put under the test root (or the first `criu` on PATH)."""
    if os.geteuid() != 0:
        pytest.fail("CRIU tests need root: run them as root (`sudo make test`)", pytrace=False)
    path = TEST_ROOT / "bin/criu"
    if path.exists():
        return str(path)
    found = shutil.which("criu")
    if found is None:
        pytest.fail(f"no CRIU at {path} nor on PATH: run `make deps` (install/deps.sh)", pytrace=False)
    return found


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
