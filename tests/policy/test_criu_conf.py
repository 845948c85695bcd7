from __future__ import annotations

from pathlib import Path

from nri_plugin.policy import CriuOption, merge_config, parse_config, render_config
from nri_plugin.policy.criu_conf import dump_flags


def test_parse_tolerates_dashes_comments_and_values() -> None:
    opts = parse_config("# user\n--tcp-established\nexternal mnt[]:m  # auto\n\nghost-limit 10M\n")
    assert opts == [CriuOption("tcp-established"), CriuOption("external", "mnt[]:m"), CriuOption("ghost-limit", "10M")]


def test_merge_keeps_user_settings_and_adds_ours() -> None:
    user = parse_config("timeout 30\nexternal mnt[/data]:d\n")
    ours = [CriuOption("timeout", "600"), CriuOption("force-irmap"), CriuOption("external", "mnt[]"),
            CriuOption("external", "mnt[/data]:d")]
    merged = merge_config(user, ours)
    assert merged == [CriuOption("timeout", "30"), CriuOption("external", "mnt[/data]:d"), CriuOption("force-irmap"),
                      CriuOption("external", "mnt[]")]


def test_render_round_trips() -> None:
    opts = [CriuOption("force-irmap", comment="why"), CriuOption("timeout", "5")]
    text = render_config(opts, "gpucr: container x\n\nmerged")
    assert text.startswith("# gpucr: container x\n#\n# merged\n")
    assert parse_config(text) == [CriuOption("force-irmap"), CriuOption("timeout", "5")]


def test_dump_flags_of_a_containers_config(tmp_path: Path) -> None:
    """What a restore must be given again of a container's CRIU config; None where it cannot be read."""
    conf = tmp_path / "c.conf"
    conf.write_text("force-irmap  # gpucr\ntcp-established  # gpucr.io/tcp-established\n--file-locks\n")
    assert dump_flags(str(conf)) == {"tcp_established": True, "file_locks": True}
    conf.write_text("link-remap\n")
    assert dump_flags(str(conf)) == {}
    assert dump_flags(str(tmp_path / "missing.conf")) is None and dump_flags("") is None
