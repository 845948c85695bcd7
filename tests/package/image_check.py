"""The Kubernetes image run the way kubelet runs install/kubernetes/daemonset.yaml (issue 13), by .ci/run after
`make package` and install/kubernetes/build-image.sh, as root, against a private containerd (argument: 1.7 or 2.1).

1. `ctr -n k8s.io images import IMAGE.tar` (containerd 2.x: `--local`, as the tests import); the archive names
   exactly the image the DaemonSet's containers use (ghcr.io/gpucr/gpucr:<package version>);
2. the DaemonSet's pod template, parsed from daemonset.yaml, translated to CRI as kubelet does: a pod sandbox with
   hostNetwork and hostPID (namespace NODE) and privileged (as any privileged container makes it), each container
   privileged with the pod's PID namespace, its command, args and env, its hostPath volumes mounted
   (DirectoryOrCreate made, Directory required), its memory limit; the ConfigMap volume as a file. Redirected, because
   this must not touch the machine's own gpucr paths or containerd and PID 1 here is the VM's init, whose namespaces
   not even root can open (`nsenter --target 1` is refused): every hostPath P except / becomes R/P in a root-only
   test dir R, except /var/run/nri (this containerd's NRI socket dir) and /etc/containerd (this containerd's config
   dir); a mount whose container path is its host path (the plugin hands those paths to runc and the hook on the
   host) keeps that identity at the redirected path, and so do the command arguments under it; the init container's
   GPUCR_* paths go the same way (GPUCR_REAL_CRIU: the test CRIU), GPUCR_HOST_PID is this process (it is in the
   machine's mount namespace, where containerd runs), GPUCR_RUNTIME is runc (this containerd's only handler); the
   node config is the ConfigMap's with its path defaults redirected likewise and metrics on a free port (host
   network: :9477 may be taken);
3. the init container runs the manifest's script and exits 0: the OCI hook launcher and the root-owned code copy are
   at the redirected paths, the runc handler of this containerd's config routed through the front, and none of the
   node's default paths appeared;
4. the plugin container runs `gpucr plugin` from the image over the mounted NRI socket: registered (its status file
   and its log say so), the liveness probe's /metrics answers with gpucr's metrics, and a pod annotated
   gpucr.io/checkpoint gets gpucr's CRIU config (org.criu.config) and the installed hook, which records it;
5. the pods removed, then the route and the hook uninstalled from the staged copy as docs/install.md says:
   containerd's config byte-identical again, the stage and R removed, the image removed, containerd stopped.
Any failure ends it with exit status 1 and the step that failed.
Usage: tests/package/image_check.py 1.7|2.1 IMAGE.tar
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nri_plugin.cri._pb import api_pb2 as pb  # noqa: E402
from nri_plugin.policy.config import NodeConfig  # noqa: E402
from tests.testenv import CRIU, TEST_ROOT, Containerd, wait_for  # noqa: E402

KUBE = REPO / "install/kubernetes"
ENV = {**os.environ, "GPUCR_INSTANCE": os.environ.get("GPUCR_INSTANCE", "image")}
#: the host paths that stay the host's: the init container reaches the host's root through it, and writes there only
#: under the GPUCR_* paths, which are redirected
KEPT = "/"
BUSYBOX_SLEEP = ["/bin/sh", "-c", "while :; do sleep 1; done"]


class Fail(Exception):
    pass


def step(msg: str) -> None:
    print(f"== image check: {msg}", flush=True)


def check(cond: object, what: str) -> None:
    if not cond:
        raise Fail(what)
    print(f"  ok: {what}", flush=True)


def sh(*cmd: str, check_rc: bool = True) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, stdin=subprocess.DEVNULL)
    out = (r.stdout + r.stderr).strip()
    if out:
        print("  " + out.replace("\n", "\n  "), flush=True)
    if check_rc and r.returncode != 0:
        raise Fail(f"{' '.join(cmd)} exited {r.returncode}")
    return r


@dataclasses.dataclass
class Redirect:
    """Where the manifest's host paths lie in this test (module docstring, step 2)."""

    root: Path  # R
    special: dict[str, str]

    def host(self, path: str) -> str:
        if path == KEPT:
            return path
        for p, to in sorted(self.special.items(), key=lambda kv: -len(kv[0])):
            if path == p or path.startswith(p + "/"):
                return to + path[len(p):]
        return f"{self.root}{path}"


def image_ref(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        f = tar.extractfile("index.json")
        assert f is not None
        index = json.load(f)
    return str(index["manifests"][0]["annotations"]["io.containerd.image.name"])


def mem_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return int(q[:-2]) * units[q[-2:]] if q[-2:] in units else int(q)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pod:
    """The DaemonSet's pod template as CRI objects, redirected (module docstring, step 2)."""

    def __init__(self, ctrd: Containerd, template: dict[str, Any], configmap: dict[str, Any], red: Redirect,
                 metrics: str) -> None:
        self.ctrd, self.t, self.red = ctrd, template, red
        spec = template["spec"]
        assert spec["hostPID"] is True and spec["hostNetwork"] is True
        privileged = any(c.get("securityContext", {}).get("privileged")
                         for c in spec["containers"] + spec.get("initContainers", []))
        self.logs = red.root / "pod-logs"
        self.logs.mkdir(mode=0o700)
        self.sandbox = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=f"gpucr-{os.getpid()}", namespace="gpucr-system",
                                           uid=f"uid-gpucr-{os.getpid()}", attempt=0),
            labels=dict(template["metadata"]["labels"]), log_directory=str(self.logs),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=ctrd.cgroup_parent, security_context=pb.LinuxSandboxSecurityContext(
                    privileged=privileged,
                    namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.NODE, ipc=pb.POD))))
        # volumes: hostPath (redirected, made as kubelet makes DirectoryOrCreate) and the ConfigMap as files
        self.volumes: dict[str, tuple[str, str | None]] = {}  # name -> (host path, manifest host path or None)
        for v in spec["volumes"]:
            if "hostPath" in v:
                src, kind = v["hostPath"]["path"], v["hostPath"].get("type", "")
                to = red.host(src)
                if kind == "DirectoryOrCreate":
                    os.makedirs(to, mode=0o755, exist_ok=True)
                elif kind == "Directory" and not os.path.isdir(to):
                    raise Fail(f"hostPath {src} (here {to}) of type Directory does not exist")
                self.volumes[v["name"]] = (to, src)
            elif "configMap" in v:
                assert v["configMap"]["name"] == configmap["metadata"]["name"]
                d = red.root / "configmap" / v["name"]
                d.mkdir(parents=True, mode=0o755)
                for key, text in configmap["data"].items():
                    (d / key).write_text(self.node_config(text, metrics) if key == "config.toml" else text)
                self.volumes[v["name"]] = (str(d), None)
            else:
                raise Fail(f"volume {v['name']}: a kind this test does not translate")
        #: manifest host path -> redirected one, for the mounts whose container path is their host path
        self.identity = {src: to for to, src in self.volumes.values() if src and any(
            m["mountPath"] == src and self.volumes[m["name"]][1] == src
            for c in spec["containers"] + spec.get("initContainers", []) for m in c.get("volumeMounts", []))}

    def node_config(self, text: str, metrics: str) -> str:
        """The ConfigMap's node config, its path defaults (those under an identity mount) redirected, metrics moved."""
        values = tomllib.loads(text)
        for f in dataclasses.fields(NodeConfig):
            v = str(values.get(f.name, getattr(NodeConfig(), f.name)))
            if v.startswith("/") and self.red.host(v) != v:
                values[f.name] = self.red.host(v)
        values["metrics_address"] = metrics
        return "".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n" for k, v in values.items())

    def arg(self, a: str) -> str:
        for src, to in sorted(self.identity.items(), key=lambda kv: -len(kv[0])):
            if a == src or a.startswith(src + "/"):
                return to + a[len(src):]
        return a

    def container(self, c: dict[str, Any], env: dict[str, str]) -> pb.ContainerConfig:
        mounts = []
        for m in c.get("volumeMounts", []):
            host, src = self.volumes[m["name"]]
            path = host if src is not None and m["mountPath"] == src else m["mountPath"]
            mounts.append(pb.Mount(host_path=host, container_path=path, readonly=bool(m.get("readOnly"))))
        limit = c.get("resources", {}).get("limits", {}).get("memory")
        return pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=c["name"], attempt=0), image=pb.ImageSpec(image=c["image"]),
            command=[self.arg(a) for a in c.get("command", [])], args=[self.arg(a) for a in c.get("args", [])],
            envs=[pb.KeyValue(key=k, value=v) for k, v in env.items()], mounts=mounts, log_path=f"{c['name']}.log",
            linux=pb.LinuxContainerConfig(
                resources=pb.LinuxContainerResources(memory_limit_in_bytes=mem_bytes(limit) if limit else 0),
                security_context=pb.LinuxContainerSecurityContext(
                    privileged=bool(c.get("securityContext", {}).get("privileged")),
                    namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.NODE, ipc=pb.POD))))

    def log(self, c: dict[str, Any]) -> str:
        p = self.logs / f"{c['name']}.log"
        return p.read_text(errors="replace") if p.exists() else ""


def init_env(c: dict[str, Any], red: Redirect) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    out = {k: red.host(v) if v.startswith("/") else v for k, v in env.items()}
    out["GPUCR_HOST_PID"] = str(os.getpid())
    out["GPUCR_RUNTIME"] = "runc"
    return out


def binary_name(config: Path) -> str | None:
    def walk(d: Any) -> str | None:
        if isinstance(d, dict):
            if "runc" in d.get("runtimes", {}):
                return d["runtimes"]["runc"].get("options", {}).get("BinaryName")
            for v in d.values():
                r = walk(v)
                if r is not None:
                    return r
        return None
    return walk(tomllib.loads(config.read_text()))


def wait_exit(cri: Any, cid: str, timeout: float) -> int:
    def done() -> Any:
        st, _ = cri.container_status(cid)
        return st.state == pb.CONTAINER_EXITED and st
    return int(wait_for(done, timeout=timeout, interval=0.5, what=f"container {cid} to exit").exit_code)


def run(ctrd: Containerd, archive: Path, red: Redirect) -> None:
    docs = [d for d in yaml.safe_load_all((KUBE / "daemonset.yaml").read_text()) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    template = ds["spec"]["template"]
    init, plugin = template["spec"]["initContainers"][0], template["spec"]["containers"][0]

    step("ctr images import")
    ref = image_ref(archive)
    check({init["image"], plugin["image"]} == {ref}, f"the archive is the image the DaemonSet runs ({ref})")
    local = ("--local",) if ctrd.major_minor[0] >= 2 else ()
    ctrd.ctr("images", "import", *local, str(archive), namespace="k8s.io", timeout=600)
    with ctrd.cri() as c:
        check(c.image_status(ref) is not None, f"CRI sees {ref}")

    config = Path(ctrd.info["dir"]) / "config.toml"
    original = config.read_bytes()
    defaults = {e["name"]: e["value"] for e in init["env"]}
    node_paths = [defaults[k] for k in ("GPUCR_STAGE", "GPUCR_PREFIX", "GPUCR_HOOK_PATH", "GPUCR_FRONT_DIR")]
    there_before = {p: os.path.lexists(p) for p in node_paths}
    env = init_env(init, red)
    metrics = f"127.0.0.1:{free_port()}"
    pod = Pod(ctrd, template, cm, red, metrics)
    hook, prefix, stage = Path(env["GPUCR_HOOK_PATH"]), Path(env["GPUCR_PREFIX"]), Path(env["GPUCR_STAGE"])
    front_dir = Path(env["GPUCR_FRONT_DIR"])
    with ctrd.cri(timeout_s=120) as c:
        pod_id = c.run_pod_sandbox(pod.sandbox)
        try:
            step(f"the init container '{init['name']}' (GPUCR_* redirected: {json.dumps(env)})")
            cid = c.create_container(pod_id, pod.container(init, env), pod.sandbox)
            c.start_container(cid)
            rc = wait_exit(c, cid, 180)
            print("  " + pod.log(init).replace("\n", "\n  "), flush=True)
            check(rc == 0, f"the init container exited 0 (exit {rc})")
            check(hook.is_file() and f'"{prefix}"' in hook.read_text() and hook.stat().st_uid == 0,
                  f"hook.sh installed the hook launcher {hook}, running the code copy {prefix}")
            check((prefix / "hooks/oci_hook.py").is_file() and (prefix / "hooks/criu_front.py").is_file(),
                  f"the root-owned code copy is in {prefix}")
            check(binary_name(config) == str(front_dir / "bin/runc"),
                  f"front.sh routed this containerd's runc handler through {front_dir}/bin/runc")
            check((front_dir / "path/criu").exists() and str(CRIU) in (front_dir / "path/front.conf").read_text(),
                  f"the front {front_dir}/path/criu relays to the test CRIU")
            check({p: os.path.lexists(p) for p in node_paths} == there_before,
                  f"none of the node's default paths appeared ({', '.join(node_paths)})")

            step(f"the plugin container '{plugin['name']}': {' '.join(pod.arg(a) for a in plugin['command'])}")
            pid_ = c.create_container(pod_id, pod.container(plugin, {}), pod.sandbox)
            c.start_container(pid_)
            state = Path(red.host(NodeConfig().state_dir.as_posix()))
            status = state / "plugin.json"
            try:
                wait_for(lambda: status.exists() and json.loads(status.read_text()).get("registered"), timeout=60,
                         interval=0.5, what=f"{status} to say the plugin registered")
                wait_for(lambda: "synchronized" in pod.log(plugin), timeout=30, interval=0.5,
                         what="the plugin's log to say it synchronized")
            except AssertionError as exc:
                raise Fail(f"{exc}; plugin log:\n{pod.log(plugin)}\ncontainerd log:\n{ctrd.log_tail(40)}") from None
            check(True, f"gpucr plugin registered over {pod.arg('/var/run/nri/nri.sock')} ({status}) and synchronized")
            probe = plugin["livenessProbe"]["httpGet"]
            with urllib.request.urlopen(f"http://{metrics}{probe['path']}", timeout=10) as r:
                body = r.read().decode()
            check(r.status == 200 and "gpucr_" in body,
                  f"the liveness probe's GET {probe['path']} answers with gpucr's metrics (on {metrics})")

            step("a managed pod (gpucr.io/checkpoint: enabled) on this containerd")
            with ctrd.pod(annotations={"gpucr.io/checkpoint": "enabled"}) as (c2, p2, cfg2):
                mid = ctrd.run_container(c2, p2, cfg2, "managed", BUSYBOX_SLEEP)
                bundle = Path(ctrd.info["state_dir"]) / "io.containerd.runtime.v2.task/k8s.io" / mid / "config.json"
                spec = json.loads(bundle.read_text())
                conf = Path(spec["annotations"].get("org.criu.config", "/none"))
                check(conf.parent == Path(red.host(NodeConfig().criu_config_dir.as_posix())) and conf.is_file(),
                      f"its org.criu.config is gpucr's, written by the plugin container ({conf})")
                hooks = [h["path"] for h in spec.get("hooks", {}).get("createRuntime", [])]
                check(hooks == [str(hook)], f"its createRuntime hook is the installed {hook}")
                check((state / "containers" / f"{mid}.json").is_file(), "the hook recorded it in the state dir")
        finally:
            step("the pods removed")
            for ct in c.list_containers(pod_id):
                try:
                    c.stop_container(ct.id, 5)
                    c.remove_container(ct.id)
                except Exception as exc:  # noqa: BLE001 (reported; the sandbox removal below takes the rest)
                    print(f"  removing container {ct.id}: {exc}", flush=True)
            c.stop_pod_sandbox(pod_id)
            c.remove_pod_sandbox(pod_id)

    step("uninstalled from the staged copy (docs/install.md)")
    if (stage / "install/front.sh").exists():
        sh("bash", str(stage / "install/front.sh"), "uninstall", "--config", str(config), "--runtime", "runc",
           "--dir", str(front_dir))
        sh("bash", str(stage / "install/hook.sh"), "uninstall", "--path", str(hook))
        shutil.rmtree(stage)
    check(config.read_bytes() == original, "containerd's config is byte-identical to before the install")
    check(not hook.exists() and not prefix.exists() and not front_dir.exists() and not stage.exists(),
          "hook, code copy, route and stage are gone")
    ctrd.ctr("images", "rm", "--sync", ref, namespace="k8s.io", check=False)


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("1.7", "2.1"):
        print(f"usage: {sys.argv[0]} 1.7|2.1 IMAGE.tar", file=sys.stderr)
        return 2
    version, archive = sys.argv[1], Path(sys.argv[2])
    if os.geteuid() != 0:
        print("== image check: FAILED: must run as root (it runs privileged containers)", flush=True)
        return 1
    if not archive.is_file():
        print(f"== image check: FAILED: {archive} is missing: build it with install/kubernetes/build-image.sh",
              flush=True)
        return 1
    started = False
    base = TEST_ROOT / "tmp"
    base.mkdir(mode=0o700, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"{ENV['GPUCR_INSTANCE']}-image-", dir=base))
    try:
        step(f"containerd {version}, GPUCR_INSTANCE={ENV['GPUCR_INSTANCE']}, test root {root}")
        r = sh("bash", str(REPO / "install/containerd.sh"), "start", version)
        started = True
        ctrd = Containerd(json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()))
        red = Redirect(root, {"/var/run/nri": str(Path(ctrd.nri_socket).parent), "/etc/containerd": ctrd.info["dir"],
                              "/usr/sbin/criu": str(CRIU)})
        t0 = time.monotonic()
        run(ctrd, archive, red)
        step(f"PASS ({time.monotonic() - t0:.0f} s)")
        return 0
    except (Fail, AssertionError, subprocess.SubprocessError, OSError, KeyError) as exc:
        print(f"== image check: FAILED: {exc}", flush=True)
        return 1
    finally:
        if started:
            sh("bash", str(REPO / "install/containerd.sh"), "stop", version, check_rc=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
