"""`make demo` itself: the story runs end to end on both containerd versions and its last line is the JSON summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import VERSIONS
from tests.testenv import REPO, deps_problem

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", VERSIONS)
def test_demo_checkpoints_and_restores_the_counter(version: str) -> None:
    assert deps_problem() is None, deps_problem()
    r = subprocess.run([sys.executable, str(REPO / "demo/demo.py")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "GPUCR_DEMO_CONTAINERD": version})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["containerd"].startswith(version) and summary["continued"] is True
    assert summary["state"] == "running"
    assert "pod id: " in r.stdout and "container id: " in r.stdout
    assert "managed (annotation gpucr.io/checkpoint=enabled)" in r.stdout
    assert "DUMP from runtime pid" in r.stdout and "RESTORE from runtime pid" in r.stdout
