"""gpucr.io/restore-from's name check and the plan that fits a checkpoint to a new container (pure)."""

from __future__ import annotations

import pytest

from nri_plugin.policy import AnnotationError, ContainerView, NodeConfig, decide, parse_annotations
from nri_plugin.policy.restore import assigned_gpus, plan_restore

G = [f"GPU-00000000-0000-4000-8000-00000000000{i}" for i in range(4)]


@pytest.mark.parametrize("name", ["ck1", "team/run-7/ckpt_2026.11.30", "a" * 128])
def test_good_names(name: str) -> None:
    assert parse_annotations({}, {"gpucr.io/restore-from": name}).restore_from == name


@pytest.mark.parametrize("name", ["", "../x", "a/../b", "/abs", ".hidden", "a//b", "a/", "a b", "a/.restore",
                                  "x" * 256])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(AnnotationError, match="restore-from.*no '..', no absolute path"):
        parse_annotations({}, {"gpucr.io/restore-from": name})


def test_restore_from_makes_the_container_managed() -> None:
    d = decide(ContainerView("c1", "web", annotations={"gpucr.io/restore-from": "ck1"}), NodeConfig())
    assert d.managed and d.reason == "annotation gpucr.io/restore-from=ck1"


def test_assigned_gpus_from_env_and_cdi() -> None:
    assert assigned_gpus([f"NVIDIA_VISIBLE_DEVICES={G[1]},{G[2]}"], [f"nvidia.com/gpu={G[3]}", "nvidia.com/gpu=0"]) \
        == (G[1], G[2], G[3])
    assert assigned_gpus(["NVIDIA_VISIBLE_DEVICES=all"]) == ()


def _plan(used: list[str], assigned: list[str], explicit: list[tuple[str, str]] = (),  # type: ignore[assignment]
          vols: dict[str, str] | None = None, now: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return plan_restore(used=used, node_gpus={g: "H200" for g in G[:2]}, assigned=assigned, explicit_map=explicit,
                        recorded_volumes=vols or {}, volumes_now=now or {})


def test_same_gpu_means_no_map() -> None:
    p = _plan([G[0]], [G[0]])
    assert p.gpu_map == () and not p.problems


def test_no_uuid_assigned_means_no_map() -> None:
    p = _plan([G[0]], [])
    assert p.gpu_map == () and not p.problems


def test_other_gpu_gets_a_one_to_one_map_over_every_gpu() -> None:
    p = _plan([G[0]], [G[1]])
    assert dict(p.gpu_map) == {G[0]: G[1], G[1]: G[0]} and not p.problems


def test_more_gpus_than_assigned_is_refused_with_the_difference() -> None:
    p = _plan([G[0], G[1]], [G[2]])
    assert p.problems and "used 2 GPU(s)" in p.problems[0] and "assigned 1" in p.problems[0] and G[2] in p.problems[0]


def test_explicit_map_wins_and_must_be_one_to_one() -> None:
    assert dict(_plan([G[0]], [], [(G[0], G[1]), (G[1], G[0])]).gpu_map) == {G[0]: G[1], G[1]: G[0]}
    p = _plan([G[0]], [], [(G[0], G[1])])
    assert p.problems and "one-to-one" in p.problems[0]


def test_explicit_map_to_an_unassigned_gpu_is_refused() -> None:
    p = _plan([G[0]], [G[2]], [(G[0], G[1]), (G[1], G[0])])
    assert any("not assigned" in x for x in p.problems), p


def test_volumes_moved_and_missing() -> None:
    p = _plan([], [], vols={"/data": "/a", "/cfg": "/c"}, now={"/data": "/b", "/cfg": "/c"})
    assert p.volumes == (("/data", "/a", "/b"),) and not p.problems
    p = _plan([], [], vols={"/data": "/a"}, now={})
    assert p.problems == ("the checkpoint has a volume at /data (host path /a at checkpoint) and the container "
                          "mounts nothing there: add a volume at /data",)


def test_other_model_and_older_driver_are_refused_with_the_difference() -> None:
    kw = dict(used=[G[0]], node_gpus={G[0]: "NVIDIA H200"}, assigned=[], explicit_map=(), recorded_volumes={},
              volumes_now={})
    p = plan_restore(**kw, inventory={G[0]: "NVIDIA A100"}, driver_now="570.10", driver_then="580.65.06")  # type: ignore[arg-type]
    assert "GPU model differs: NVIDIA H200 at checkpoint" in p.problems[1] and "NVIDIA A100 here" in p.problems[1]
    assert "driver here (570.10) is older than at checkpoint (580.65.06)" in p.problems[0]
    p = plan_restore(**kw, inventory={G[1]: "NVIDIA H200"})  # type: ignore[arg-type]
    assert p.problems == (f"GPU {G[0]} (for {G[0]} of the checkpoint) is not on this node (here: {G[1]})",)
    assert not plan_restore(**kw, inventory={G[0]: "NVIDIA H200"}, driver_now="580.65.06",  # type: ignore[arg-type]
                            driver_then="580.65.06").problems
