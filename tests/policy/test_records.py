from __future__ import annotations

import stat
from pathlib import Path

import pytest

from nri_plugin.policy import (
    ContainerRecord, RecordedGpus, RecordedPolicy, RecordError, RecordMissingError, load_record, remove_record,
    write_record,
)

CID = "a" * 64


def rec(**kw: object) -> ContainerRecord:
    base: dict[str, object] = dict(container_id=CID, name="train", pod_id="p1", pod_name="job", pod_namespace="ml",
                                   managed=True, reason="annotation")
    base.update(kw)
    return ContainerRecord(**base)  # type: ignore[arg-type]


def test_write_is_private_and_round_trips(tmp_path: Path) -> None:
    state = tmp_path / "state"
    p = write_record(state, rec(gpus=RecordedGpus("0")))
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert load_record(state, CID) == rec(gpus=RecordedGpus("0"))
    assert remove_record(state, CID) and not remove_record(state, CID)


@pytest.mark.parametrize("gpus, policy", [
    (RecordedGpus(), RecordedPolicy()),
    (RecordedGpus("0,1", ("/dev/nvidia0",), ("nvidia.com/gpu=0",), ("env NVIDIA_VISIBLE_DEVICES",)),
     RecordedPolicy(1234, (("GPU-a", "GPU-b"), ("GPU-b", "GPU-a")), {"gpucr.io/lock-timeout": "1234"})),
    (RecordedGpus("all"), RecordedPolicy(None, (("GPU-a", "GPU-a"),), {})),
])
def test_typed_fields_round_trip(tmp_path: Path, gpus: RecordedGpus, policy: RecordedPolicy) -> None:
    write_record(tmp_path, rec(gpus=gpus, policy=policy))
    got = load_record(tmp_path, CID)
    assert got == rec(gpus=gpus, policy=policy)
    assert isinstance(got.policy, RecordedPolicy) and isinstance(got.policy.gpu_map, tuple)


@pytest.mark.parametrize("policy, match", [
    ('{"lock_timeout_ms": "soon"}', "corrupt"),
    ('{"gpu_map": [["only-one"]]}', "corrupt"),
    ('"not an object"', "corrupt"),
])
def test_malformed_typed_fields_are_named(tmp_path: Path, policy: str, match: str) -> None:
    import json
    p = write_record(tmp_path, rec())
    data = json.loads(p.read_text())
    data["policy"] = json.loads(policy)
    p.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=match):
        load_record(tmp_path, CID)


def test_missing_record_explains_why(tmp_path: Path) -> None:
    with pytest.raises(RecordMissingError, match="plugin did not see its creation"):
        load_record(tmp_path, CID)


@pytest.mark.parametrize("content,match", [
    ("{not json", "unreadable or corrupt"),
    ('{"format": 99}', "format 99, expected 1"),
    ('{"format": 1, "bogus": 2}', "corrupt"),
    ("[]", "format"),
])
def test_corrupt_records_are_named(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "containers" / f"{CID}.json"
    p.parent.mkdir(parents=True)
    p.write_text(content)
    with pytest.raises(RecordError, match=match) as ei:
        load_record(tmp_path, CID)
    assert str(p) in str(ei.value)


def test_record_of_another_container_is_refused(tmp_path: Path) -> None:
    write_record(tmp_path, rec())
    other = "b" * 64
    (tmp_path / "containers" / f"{CID}.json").rename(tmp_path / "containers" / f"{other}.json")
    with pytest.raises(RecordError, match="belongs to container"):
        load_record(tmp_path, other)


def test_path_traversal_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="invalid container id"):
        load_record(tmp_path, "../../etc/passwd")
