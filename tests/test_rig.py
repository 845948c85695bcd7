"""The cgroup-v2 leg's runc wrapper (tests/rig/runc_v2.py): it finds the subcommand and bundle as runc does and drops
exactly the limits the v2 root cannot enforce (the leg's integration tests run through it for real)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

RIG = Path(__file__).resolve().parent / "rig/runc_v2.py"


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("runc_v2", RIG)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "cg").mkdir()
    (tmp_path / "cg/cgroup.controllers").write_text("hugetlb\n")
    monkeypatch.setattr(mod, "CGROUP_ROOT", str(tmp_path / "cg"))
    return mod


def test_subcommand_and_bundle_as_runc_parses_them(rig: ModuleType) -> None:
    args = ["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "--pid-file", "p", "id"]
    assert rig.subcommand(args) == "create" and rig.bundle_of(args) == "/b"
    assert rig.subcommand(["--root", "/r", "run", "-d", "create"]) == "run"
    assert rig.bundle_of(["restore", "-b", "/x", "id"]) == "/x"
    assert rig.bundle_of(["restore", "--bundle=/y", "id"]) == "/y"


def test_strip_drops_only_what_the_root_lacks(rig: ModuleType, tmp_path: Path) -> None:
    spec = {"linux": {"resources": {"cpu": {"shares": 2}, "memory": {"limit": 1}, "pids": {"limit": 9},
                                    "devices": [{"allow": False, "access": "rwm"}],
                                    "hugepageLimits": [{"pageSize": "2MB", "limit": 0}]}}}
    (tmp_path / "config.json").write_text(json.dumps(spec))
    rig.strip(str(tmp_path))
    res = json.loads((tmp_path / "config.json").read_text())["linux"]["resources"]
    assert set(res) == {"devices", "hugepageLimits"}
