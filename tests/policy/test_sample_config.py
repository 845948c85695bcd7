"""The packages' /etc/gpucr/config.toml (tools/sample_config.py) names every node-config key at its default."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

from nri_plugin.policy.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]


def _sample() -> str:
    return subprocess.run([sys.executable, str(ROOT / "tools/sample_config.py")], check=True, capture_output=True,
                          text=True).stdout


def test_sample_is_all_comments_and_loads_as_the_defaults() -> None:
    text = _sample()
    assert tomllib.loads(text) == {}  # installed as is, it changes nothing
    keys = [m.group(1) for m in re.finditer(r"^# (\w+) = ", text, re.M)]
    assert keys == [f.name for f in fields(NodeConfig) if f.name != "extra"]
    uncommented = "\n".join(m.group(0)[2:] for m in re.finditer(r"^# \w+ = .*$", text, re.M))
    assert NodeConfig.from_mapping(tomllib.loads(uncommented), "sample") == NodeConfig()


def test_every_key_has_its_doc_line() -> None:
    blocks = _sample().split("\n\n")[1:]
    for block in blocks:
        lines = block.strip().splitlines()
        assert len(lines) >= 2 and not re.match(r"# \w+ = ", lines[0]), block
