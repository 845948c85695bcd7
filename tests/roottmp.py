"""``root_tmp``: a fresh directory in a place only root can change (under /run, not the sticky /tmp), for tests of
what gpucr accepts as root's alone (the hook, the state and CRIU config dirs: nri_plugin.host.paths)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["root_tmp"]


@pytest.fixture
def root_tmp() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root (root-owned paths)", pytrace=False)
    d = Path(tempfile.mkdtemp(prefix="gpucr-test-", dir="/run"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
