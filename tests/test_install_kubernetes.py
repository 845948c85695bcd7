"""install/kubernetes/: every manifest is checked against the Kubernetes API schema as the ``kubernetes`` client's
models define it (each field known to its object's model, types of the right kind, required fields present), not only
as YAML; the DaemonSet has what gpucr needs on a node, and the example pod's gpucr.io/ annotations parse."""

from __future__ import annotations

import datetime
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml

import nri_plugin
from nri_plugin.policy.annotations import parse_annotations
from nri_plugin.policy.config import NodeConfig

KUBE = Path(__file__).resolve().parent.parent / "install/kubernetes"
_PRIMITIVE = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object,
              "datetime": (str, datetime.datetime), "date": (str, datetime.date)}


def model_of(doc: dict[str, Any]) -> str:
    group, _, version = doc["apiVersion"].rpartition("/")
    prefix = {"": "V1", "apps": "V1"}.get(group)
    assert prefix and version == "v1", f"unexpected apiVersion {doc['apiVersion']}"
    return f"{prefix}{doc['kind']}"


def schema_errors(value: Any, type_name: str, where: str) -> list[str]:
    """Why ``value`` is not a ``type_name`` of the Kubernetes API (empty when it is)."""
    m = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, m.group(1), f"{where}[{i}]")]
    m = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{where}: expected a map"]
        inner = m.group(1) or m.group(2)
        return [e for k, v in value.items() for e in schema_errors(v, inner, f"{where}.{k}")]
    if type_name in _PRIMITIVE:
        return [] if isinstance(value, _PRIMITIVE[type_name]) else [f"{where}: expected {type_name}, got {value!r}"]
    cls = getattr(k8s, type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} object"]
    by_json = {j: a for a, j in cls.attribute_map.items()}
    errors = [f"{where}.{k}: unknown field of {type_name}" for k in value if k not in by_json]
    for k, v in value.items():
        if k in by_json:
            errors += schema_errors(v, cls.openapi_types[by_json[k]], f"{where}.{k}")
    if not errors:  # the model's own constructor checks required fields and enums
        try:
            cls(**{by_json[k]: v for k, v in value.items()})
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
    return errors


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(KUBE.glob("*.yaml")):
        out += [(f"{f.name}#{i}", d) for i, d in enumerate(yaml.safe_load_all(f.read_text())) if d]
    return out


def test_there_are_manifests() -> None:
    kinds = sorted(d["kind"] for _, d in documents())
    assert kinds == ["ConfigMap", "DaemonSet", "Namespace", "Pod"]


@pytest.mark.parametrize("name,doc", documents(), ids=[n for n, _ in documents()])
def test_manifest_matches_the_api_schema(name: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc, model_of(doc), name) == []


def test_the_validator_catches_mistakes() -> None:
    pod = yaml.safe_load((KUBE / "pytorch-pod.yaml").read_text())
    pod["spec"]["containers"][0]["resource"] = pod["spec"]["containers"][0].pop("resources")  # a typo
    pod["spec"]["hostPID"] = "yes"
    errs = "\n".join(schema_errors(pod, "V1Pod", "pod"))
    assert "pod.spec.containers[0].resource: unknown field of V1Container" in errs
    assert "pod.spec.hostPID: expected bool" in errs
    pod = yaml.safe_load((KUBE / "pytorch-pod.yaml").read_text())
    del pod["spec"]["containers"][0]["name"]
    errs = "\n".join(schema_errors(pod, "V1Pod", "pod"))
    assert errs.startswith("pod.spec.containers[0]:") and "name" in errs  # a required field


def test_daemonset_has_what_gpucr_needs() -> None:
    ds = next(d for _, d in documents() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    plugin = spec["containers"][0]
    assert plugin["securityContext"]["privileged"] is True
    mounted = {host[m["name"]]: m["mountPath"] for m in plugin["volumeMounts"] if m["name"] in host}
    for path in ("/var/run/nri", "/run/gpucr", "/var/lib/gpucr", "/usr/libexec/gpucr", "/etc/containerd"):
        assert mounted.get(path) == path, path
    assert plugin["command"][:2] == ["gpucr", "plugin"] and "/var/run/nri/nri.sock" in plugin["command"]
    init = spec["initContainers"][0]
    script = init["args"][0]
    assert '/install/front.sh" install' in script and '/install/hook.sh" install' in script
    assert 'nsenter --target "$GPUCR_HOST_PID" --mount' in script
    # the host paths the init container installs to: configurable (tests/package/image_check.py redirects them), each
    # defaulting to what a node has (the node config's hook_path, install/front.sh's and install/hook.sh's defaults)
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env == {"GPUCR_RUNTIME": "nvidia", "GPUCR_HOST_PID": "1",
                   "GPUCR_CONTAINERD_CONFIG": "/etc/containerd/config.toml", "GPUCR_STAGE": "/usr/lib/gpucr-stage",
                   "GPUCR_PREFIX": "/usr/lib/gpucr", "GPUCR_HOOK_PATH": NodeConfig().hook_path,
                   "GPUCR_FRONT_DIR": "/usr/local/lib/gpucr/front", "GPUCR_REAL_CRIU": "/usr/sbin/criu",
                   "GPUCR_LOG_DIR": "/var/log/gpucr"}
    assert all(f"${k}" in script or f"${{{k}}}" in script for k in env)  # every one of them is used
    cm = next(d for _, d in documents() if d["kind"] == "ConfigMap")
    cfg = NodeConfig.from_mapping(tomllib.loads(cm["data"]["config.toml"]), "configmap")
    assert cfg.metrics_address.endswith(":9477")
    assert plugin["ports"][0]["containerPort"] == 9477


def test_example_pod_annotations_parse() -> None:
    pod = yaml.safe_load((KUBE / "pytorch-pod.yaml").read_text())
    policy = parse_annotations(pod["metadata"]["annotations"], {}, what="example pod")
    assert policy.checkpoint is True and policy.tcp_established is True and policy.lock_timeout_ms == 30000


def test_the_image_is_the_package() -> None:
    """The Dockerfile and build-image.sh install gpucr's .debs on Debian (no pip), and the DaemonSet runs the image of
    this version: the tag build-image.sh names the archive with (the package version) is the manifest's."""
    docker = (KUBE / "Dockerfile").read_text()
    assert "FROM debian:" in docker and "pip" not in docker
    assert "dist/gpucr_*.deb dist/gpucr-criu_*.deb" in docker and "util-linux" in docker
    build = (KUBE / "build-image.sh").read_text()
    assert "REF=ghcr.io/gpucr/gpucr:$VERSION" in build and "--include=util-linux" in build
    ds = next(d for _, d in documents() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    images = {c["image"] for c in spec["containers"] + spec["initContainers"]}
    assert images == {f"ghcr.io/gpucr/gpucr:{nri_plugin.__version__}"}
