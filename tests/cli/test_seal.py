"""``gpucr seal DIR``: a runtime's checkpoint inside the checkpoint root gets gpucr.json; anything else is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nri_plugin.ckpt.criu.binary import cli_version
from nri_plugin.ckpt.restore_source import open_source
from nri_plugin.cli.main import main
from tests.testenv import CRIU


@pytest.fixture
def root(tmp_path: Path) -> tuple[Path, Path]:
    r = tmp_path / "root"
    r.mkdir(mode=0o700)
    conf = tmp_path / "config.toml"
    conf.write_text(f'checkpoint_root = "{r}"\ncriu_path = "{CRIU}"\n')
    return r, conf


def test_seal_images_then_restore_source_accepts(root: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    r, conf = root
    (r / "a" / "images").mkdir(parents=True, mode=0o700)
    (r / "a" / "images" / "descriptors.json").write_text("[]")
    assert main(["seal", str(r / "a"), "--config", str(conf), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "images" and out["name"] == "a" and out["files"] == 1
    src = open_source(r, "a")
    assert src.kind == "images" and src.meta.kernel_release == os.uname().release
    assert src.meta.criu_version == cli_version(str(CRIU))  # the node config's criu_path
    assert main(["seal", str(r / "a"), "--config", str(conf)]) == 1
    assert "already a gpucr checkpoint" in capsys.readouterr().err


def test_seal_refuses_outside_root_and_non_checkpoints(root: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    r, conf = root
    (tmp_path / "out" / "images").mkdir(parents=True)
    assert main(["seal", str(tmp_path / "out"), "--config", str(conf)]) == 1
    assert "outside the configured checkpoint root" in capsys.readouterr().err
    (r / "empty").mkdir(mode=0o700)
    assert main(["seal", str(r / "empty"), "--config", str(conf)]) == 1
    assert "holds no runtime checkpoint" in capsys.readouterr().err
    assert not (r / "empty" / "gpucr.json").exists()
