from __future__ import annotations

from pathlib import Path

import pytest

from nri_plugin.policy import ConfigError, NodeConfig, load_config


def test_missing_default_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nri_plugin.policy.config.DEFAULT_CONFIG_PATH", tmp_path / "none.toml")
    assert load_config() == NodeConfig()


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")


def test_values_are_typed_and_checked(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('manage_gpu_containers = true\nstate_dir = "/run/x"\nlock_timeout_ms = 500\n'
                 'annotation_errors = "warn"\n')
    c = load_config(p)
    assert c.manage_gpu_containers and c.state_dir == Path("/run/x") and c.lock_timeout_ms == 500
    assert c.annotation_errors == "warn"
    assert c.criu_path == "" and not c.restore_allow_older_kernel  # the defaults: gpucr-criu's or PATH's; refuse
    p.write_text('criu_path = "/usr/lib/gpucr/criu/criu"\nrestore_allow_older_kernel = true\n')
    c = load_config(p)
    assert c.criu_path == "/usr/lib/gpucr/criu/criu" and c.restore_allow_older_kernel


@pytest.mark.parametrize("text,match", [
    ("bogus = 1", "unknown key"),
    ("manage_gpu_containers = 1", "true or false"),
    ('state_dir = "relative"', "absolute path"),
    ('criu_path = "criu"', "criu_path must be an absolute path or"),
    ('annotation_errors = "maybe"', "accepted: fail, warn"),
    ("lock_timeout_ms = -1", "positive number"),
    ("this is = not toml [", "not valid TOML"),
])
def test_bad_config_names_key_and_fix(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as ei:
        load_config(p)
    assert str(p) in str(ei.value)
