from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_plugin.policy import ANNOTATIONS, AnnotationError, parse_annotations


def test_container_annotation_wins_over_pod() -> None:
    p = parse_annotations({"gpucr.io/checkpoint": "disabled", "gpucr.io/tcp-established": "true"},
                          {"gpucr.io/checkpoint": "enabled"})
    assert p.checkpoint is True and p.tcp_established is True
    assert p.source == {"gpucr.io/checkpoint": "enabled", "gpucr.io/tcp-established": "true"}


def test_other_prefixes_are_ignored() -> None:
    p = parse_annotations({"io.kubernetes.pod.name": "x", "gpucr.iox/y": "z"}, {})
    assert p.checkpoint is None and p.source == {}


@pytest.mark.parametrize("key,value,accepted", [
    ("gpucr.io/checkpoint", "yes", '"enabled" or "disabled"'),
    ("gpucr.io/tcp-established", "maybe", "true or false"),
    ("gpucr.io/criu-timeout", "0", "seconds from 1 to 86400"),
    ("gpucr.io/criu-timeout", "-5", "seconds from 1 to 86400"),
    ("gpucr.io/lock-timeout", "1e3", "milliseconds"),
    ("gpucr.io/gpu-map", "0=1", "OLD=NEW GPU UUIDs"),
    ("gpucr.io/phase-timeouts", "sync=5", "PHASE=SECONDS, PHASE one of cuda-lock"),
    ("gpucr.io/phase-timeouts", "criu-dump=0", "seconds from 1 to 86400"),
    ("gpucr.io/phase-timeouts", ",", "at least one PHASE=SECONDS"),
    ("gpucr.io/checkpoint-interval", "0s", "a duration from 1s to 168h"),
    ("gpucr.io/checkpoint-interval", "15 minutes", "a duration from 1s to 168h"),
    ("gpucr.io/checkpoint-interval", "169h", "a duration from 1s to 168h"),
    ("gpucr.io/checkpoint-interval", "", "a duration from 1s to 168h"),
    ("gpucr.io/checkpoint-keep", "0", "a whole number from 1 to 1000"),
    ("gpucr.io/checkpoint-keep", "three", "a whole number from 1 to 1000"),
])
def test_bad_value_names_annotation_container_and_accepted_values(key: str, value: str, accepted: str) -> None:
    with pytest.raises(AnnotationError) as ei:
        parse_annotations({}, {key: value}, what="container web in pod default/app")
    msg = str(ei.value)
    assert ei.value.key == key
    assert "container web in pod default/app" in msg and key in msg and repr(value) in msg and accepted in msg


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(AnnotationError, match=r"unknown annotation 'gpucr.io/chekpoint'.*gpucr.io/checkpoint"):
        parse_annotations({"gpucr.io/chekpoint": "enabled"}, {})


def test_warn_mode_collects_and_ignores() -> None:
    errs: list[AnnotationError] = []
    p = parse_annotations({}, {"gpucr.io/checkpoint": "enabled", "gpucr.io/bogus": "1", "gpucr.io/file-locks": "x"},
                          on_error=errs.append)
    assert p.checkpoint is True and p.file_locks is None
    assert sorted(e.key for e in errs) == ["gpucr.io/bogus", "gpucr.io/file-locks"]


def test_gpu_map_parses_pairs() -> None:
    p = parse_annotations({}, {"gpucr.io/gpu-map": "GPU-a=GPU-b, GPU-c=GPU-d"})
    assert p.gpu_map == (("GPU-a", "GPU-b"), ("GPU-c", "GPU-d"))


@given(st.dictionaries(st.sampled_from([f"gpucr.io/{k}" for k in ANNOTATIONS] + ["gpucr.io/x", "other"]),
                       st.text(max_size=30)))
def test_any_input_parses_or_raises_annotation_error(ann: dict[str, str]) -> None:
    try:
        parse_annotations(ann, {})
    except AnnotationError as exc:
        assert exc.key in ann


def test_phase_timeouts_parse_and_the_node_caps_them() -> None:
    from nri_plugin.policy import NodeConfig

    p = parse_annotations({}, {"gpucr.io/phase-timeouts": "criu-dump=30, cuda-checkpoint=9000"})
    assert p.phase_timeouts == (("criu-dump", 30), ("cuda-checkpoint", 9000))
    b = NodeConfig(cuda_checkpoint_timeout_s=120.0).phase_budgets(2000, p.phase_timeouts)
    assert b["criu-dump"] == 30 and b["cuda-checkpoint"] == 120 and b["cuda-lock"] == 32


@pytest.mark.parametrize("value,seconds", [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2h", 7200), ("45", 45),
                                           ("1m5s", 65), ("168h", 604800)])
def test_checkpoint_interval_durations(value: str, seconds: int) -> None:
    p = parse_annotations({}, {"gpucr.io/checkpoint-interval": value, "gpucr.io/checkpoint-keep": "4"})
    assert p.checkpoint_interval_s == seconds and p.checkpoint_keep == 4
