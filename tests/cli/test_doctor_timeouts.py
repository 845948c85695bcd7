"""``gpucr doctor``'s NRI timeout checks on real containerd config files: containerd's defaults are enough (the
restore's slow half runs in the runc wrapper), lower values are warned about with the value, the reason and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_plugin.cli.doctor import Doctor, parse_duration


def _checks(tmp_path: Path, nri_lines: str) -> dict[str, dict]:
    conf = tmp_path / "config.toml"
    conf.write_text(f'version = 3\n[plugins."io.containerd.nri.v1.nri"]\n  disable = false\n{nri_lines}')
    d = Doctor(containerd_config=conf)
    d.check_containerd_config()
    d.check_nri_timeouts()
    return {c.name: {"status": c.status, "detail": c.detail, "fix": c.fix, **c.data} for c in d.checks}


def test_defaults_are_enough(tmp_path: Path) -> None:
    c = _checks(tmp_path, "")
    req = c["NRI plugin_request_timeout"]
    assert req["status"] == "ok" and req["seconds"] == 2.0 and "2s (containerd's default)" in req["detail"]
    assert c["NRI plugin_registration_timeout"]["status"] == "ok"


def test_raised_values_are_ok(tmp_path: Path) -> None:
    c = _checks(tmp_path, '  plugin_request_timeout = "1m"\n  plugin_registration_timeout = "10s"\n')
    assert c["NRI plugin_request_timeout"]["status"] == "ok" and c["NRI plugin_request_timeout"]["seconds"] == 60.0


def test_low_values_are_warned_with_why_and_fix(tmp_path: Path) -> None:
    c = _checks(tmp_path, '  plugin_request_timeout = "500ms"\n  plugin_registration_timeout = "1s"\n')
    req, reg = c["NRI plugin_request_timeout"], c["NRI plugin_registration_timeout"]
    assert req["status"] == "warn" and req["seconds"] == 0.5
    assert "500ms" in req["detail"] and "below the 2s gpucr needs" in req["detail"]
    assert "gpucr.io/restore-from container fails to start" in req["detail"]
    assert 'set plugin_request_timeout = "2s"' in req["fix"] and "restart containerd" in req["fix"]
    assert reg["status"] == "warn" and "below the 5s gpucr needs" in reg["detail"]


def test_malformed_value_is_warned(tmp_path: Path) -> None:
    c = _checks(tmp_path, '  plugin_request_timeout = "two"\n')
    assert c["NRI plugin_request_timeout"]["status"] == "warn" and "not a duration" in \
        c["NRI plugin_request_timeout"]["detail"]


@pytest.mark.parametrize("text, secs", [("2s", 2.0), ("500ms", 0.5), ("1m30s", 90.0), ("1.5s", 1.5), ("0", 0.0),
                                        ("2", None), ("s", None), ("2x", None)])
def test_parse_duration(text: str, secs: float | None) -> None:
    assert parse_duration(text) == secs
