"""packaging/gpucr-plugin.service passes ``systemd-analyze verify`` (systemd's own parser: every key known, every
value parsed, the ExecStart binary present): checked on a copy whose ExecStart binary is one that exists here (the
package round trip, tests/package/roundtrip.py, verifies the installed unit with the installed /usr/bin/gpucr)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "packaging/gpucr-plugin.service"


def verify(unit: Path) -> str:
    """What ``systemd-analyze verify`` says about ``unit`` (empty when it finds nothing wrong)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (Debian's; no running systemd needed)",
                    pytrace=False)
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    return (f"rc {r.returncode}: " if r.returncode else "") + (r.stdout + r.stderr).strip()


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/gpucr plugin " in text
    unit = tmp_path / "gpucr-plugin.service"
    unit.write_text(text.replace("ExecStart=/usr/bin/gpucr ", f"ExecStart={shutil.which('true')} "))
    assert verify(unit) == ""
    # the same check notices a mistake (a misspelled key, a bad value)
    unit.write_text(text.replace("Restart=on-failure", "Restart=sometimes").replace("Type=simple", "Typ=simple"))
    said = verify(unit)
    assert "Unknown key 'Typ'" in said and "sometimes" in said
