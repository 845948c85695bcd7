from __future__ import annotations

import pytest

from nri_plugin.policy import AnnotationError, ContainerView, MountView, NodeConfig, decide, detect_gpus


def view(**kw: object) -> ContainerView:
    base: dict[str, object] = dict(id="c" * 64, name="train", pod_id="p" * 64, pod_name="job", pod_namespace="ml")
    base.update(kw)
    return ContainerView(**base)  # type: ignore[arg-type]


def names(d) -> list[str]:  # type: ignore[no-untyped-def]
    return [o.name for o in d.criu_options]


def test_unannotated_container_is_not_managed() -> None:
    d = decide(view(), NodeConfig())
    assert not d.managed and "not opted in" in d.reason and d.criu_options == ()


def test_opt_in_by_pod_annotation() -> None:
    d = decide(view(pod_annotations={"gpucr.io/checkpoint": "enabled"}), NodeConfig())
    assert d.managed and d.reason == "annotation gpucr.io/checkpoint=enabled"
    assert "force-irmap" in names(d) and "link-remap" in names(d)


def test_gpu_container_managed_only_when_node_says_so() -> None:
    v = view(env=["NVIDIA_VISIBLE_DEVICES=all"])
    assert not decide(v, NodeConfig()).managed
    d = decide(v, NodeConfig(manage_gpu_containers=True))
    assert d.managed and "NVIDIA_VISIBLE_DEVICES=all" in d.reason
    assert {("external", "mnt[]"), ("ext-mount-map", "auto")} <= {(o.name, o.value) for o in d.criu_options}


def test_opt_out_wins_over_node_gpu_policy() -> None:
    d = decide(view(env=["NVIDIA_VISIBLE_DEVICES=0"], annotations={"gpucr.io/checkpoint": "disabled"}),
               NodeConfig(manage_gpu_containers=True))
    assert not d.managed and "disabled" in d.reason


@pytest.mark.parametrize("kw,expect", [
    (dict(env=["NVIDIA_VISIBLE_DEVICES=void"]), False),
    (dict(env=["NVIDIA_VISIBLE_DEVICES="]), False),
    (dict(devices=["/dev/nvidia0", "/dev/nvidiactl"]), True),
    (dict(cdi_devices=["nvidia.com/gpu=0"]), True),
    (dict(cdi_devices=["vendor.com/fpga=1"]), False),
    (dict(mounts=[MountView("/dev/nvidia-uvm")]), True),
])
def test_gpu_detection(kw: dict[str, list[object]], expect: bool) -> None:
    mounts = kw.pop("mounts", [])
    g = detect_gpus(kw.get("env", []), kw.get("devices", []), kw.get("cdi_devices", []),  # type: ignore[arg-type]
                    [m.destination for m in mounts])  # type: ignore[attr-defined]
    assert g.is_gpu is expect


def test_annotation_options_become_criu_options() -> None:
    d = decide(view(annotations={"gpucr.io/checkpoint": "enabled", "gpucr.io/tcp-established": "true",
                                 "gpucr.io/file-locks": "yes", "gpucr.io/ext-unix-sk": "1",
                                 "gpucr.io/force-irmap": "false", "gpucr.io/criu-timeout": "600"}), NodeConfig())
    got = {(o.name, o.value) for o in d.criu_options}
    assert {("tcp-established", None), ("file-locks", None), ("ext-unix-sk", None), ("timeout", "600")} <= got
    assert "force-irmap" not in names(d)


def test_mount_propagation_enables_external_masters_and_sharing() -> None:
    d = decide(view(annotations={"gpucr.io/checkpoint": "enabled"},
                    mounts=[MountView("/data", "bind", "/srv/data", ("rbind", "rslave"))]), NodeConfig())
    assert {"enable-external-masters", "enable-external-sharing"} <= set(names(d))
    assert "external" not in names(d)  # auto-external mounts only for GPU containers (they need ext-mount-map auto)


def test_bad_annotation_fails_or_warns_by_node_config() -> None:
    v = view(annotations={"gpucr.io/checkpoint": "enabled", "gpucr.io/tcp-established": "perhaps"})
    with pytest.raises(AnnotationError, match="container train in pod ml/job"):
        decide(v, NodeConfig())
    d = decide(v, NodeConfig(annotation_errors="warn"))
    assert d.managed and len(d.warnings) == 1 and "gpucr.io/tcp-established" in d.warnings[0]


def test_checkpoint_interval_manages_the_container_with_default_keep() -> None:
    d = decide(view(annotations={"gpucr.io/checkpoint-interval": "15m"}), NodeConfig())
    assert d.managed and "checkpoint-interval" in d.reason
    assert d.periodic is not None and (d.periodic.interval_s, d.periodic.keep) == (900, 3)
    assert decide(view(annotations={}), NodeConfig()).periodic is None


@pytest.mark.parametrize("ann,node,expect", [
    ({"gpucr.io/checkpoint-interval": "30s"}, {}, "at least 60s (the node's checkpoint_interval_min_s)"),
    ({"gpucr.io/checkpoint-interval": "5s"}, {"checkpoint_interval_min_s": 10}, "at least 10s"),
    ({"gpucr.io/checkpoint-interval": "5m", "gpucr.io/checkpoint-keep": "11"}, {}, "1 to 10 (the node's "
                                                                                    "checkpoint_keep_max)"),
    ({"gpucr.io/checkpoint-keep": "2"}, {}, "without gpucr.io/checkpoint-interval"),
    ({"gpucr.io/checkpoint-interval": "5m", "gpucr.io/checkpoint": "disabled"}, {},
     "contradicts gpucr.io/checkpoint=disabled"),
])
def test_periodic_limits_of_the_node(ann: dict[str, str], node: dict[str, object], expect: str) -> None:
    with pytest.raises(AnnotationError) as ei:
        decide(view(annotations=ann), NodeConfig.from_mapping(node))
    assert expect in str(ei.value) and "container " in str(ei.value)
    warned = decide(view(annotations=ann), NodeConfig.from_mapping({**node, "annotation_errors": "warn"}))
    assert warned.periodic is None and any(expect in w for w in warned.warnings)


def test_node_can_disable_periodic_checkpoints() -> None:
    node = NodeConfig.from_mapping({"periodic_checkpoints": False, "checkpoint_keep_max": 2})
    d = decide(view(annotations={"gpucr.io/checkpoint-interval": "2m"}), node)
    assert d.periodic is None and any("periodic_checkpoints = false" in w for w in d.warnings)
    d = decide(view(annotations={"gpucr.io/checkpoint-interval": "2m", "gpucr.io/checkpoint": "enabled"}),
               NodeConfig.from_mapping({"checkpoint_keep_max": 2}))
    assert d.periodic is not None and d.periodic.keep == 2  # the default keep, capped by the node
