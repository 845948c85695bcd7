#!/usr/bin/env python3
"""`make demo`: gpucr's main job on the local default, told step by step.

A private containerd (2.1.9 by default; GPUCR_DEMO_CONTAINERD=1.7 for 1.7.24) runs with gpucr's two halves in place:
the NRI plugin (``gpucr plugin``: the checkpoint policy) and the CRIU front (the ``criu`` runc runs). A CRI pod that
opts in with ``gpucr.io/checkpoint: enabled`` runs a counter; it is checkpointed while running with a standard command
(``ctr c checkpoint --task``), killed, and brought back with ``ctr c restore``: the counter continues from its
checkpointed value. Then the restore the kubelet cannot do: the pod, checkpointed through CRI (``gpucr checkpoint
--via-runtime``: CheckpointContainer on 2.x, the task API on 1.7) into the node's checkpoint root, is restored into a
NEW pod whose container names it with ``gpucr.io/restore-from`` (docs/design.md). With an NVIDIA GPU present (and
torch in this Python) the pod trains a model on the GPU instead (demo/gpu_pod.py), through both restores: training
continues and its GPU data is bit-identical (GPUCR_DEMO_CPU=1 forces the counter). Each step prints what gpucr did (from the plugin's and the front's logs and its state records).
Everything is cleaned up at the end (containerd stopped, nothing left running or mounted); the last line is JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_plugin.cri import CriClient, container_config, pod_config  # noqa: E402
from nri_plugin.cri._pb import api_pb2 as cri_pb  # noqa: E402
from nri_plugin.cri.client import state_name  # noqa: E402
from nri_plugin.errors import GpucrError  # noqa: E402
from nri_plugin.policy import load_record  # noqa: E402
from demo import gpu_pod  # noqa: E402

TEST_ROOT = Path(os.environ.get("GPUCR_TEST_ROOT", "/var/lib/gpucr-test"))
COUNTER = "i=0; while :; do i=$((i+1)); echo $i >> /data/counter.log; sleep 0.5; done"
#: its own containerd instance; GPUCR_INSTANCE (each test session's) keeps concurrent demos apart
INSTANCE = f"{os.environ['GPUCR_INSTANCE']}-demo" if os.environ.get("GPUCR_INSTANCE") else "demo"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def gpucr_said(text: str, prefix: str = "  gpucr") -> None:
    for line in text.strip().splitlines():
        print(f"{prefix}: {line.strip()}", flush=True)


class Log:
    """Tail of a log file since the last mark."""

    def __init__(self, path: Path) -> None:
        self.path, self.mark = path, 0

    def new(self) -> str:
        if not self.path.exists():
            return ""
        with self.path.open("rb") as f:
            f.seek(self.mark)
            data = f.read().decode(errors="replace")
        self.mark += len(data.encode())
        return data


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise GpucrError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def counter(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def wait(pred, what: str, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (v := pred()):
        if time.monotonic() > deadline:
            raise GpucrError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return v


def new_pod_restore(cri: CriClient, info: dict[str, str], work: Path, data: Path, name: str,
                    at_ckpt: tuple[int, int], plog: Log, flog: Log, gpu_digest: str | None = None) -> dict[str, object]:
    """Restore checkpoint ``name`` into a NEW pod through gpucr.io/restore-from, its volume at another host path;
    the container is then stopped and removed like any other. With ``gpu_digest`` the pod is the GPU training pod:
    its GPU data must come back bit-identical (a fresh start draws other random data) and its step go on from the
    checkpoint's."""
    data2 = work / "data-new-pod"
    shutil.copytree(data, data2)
    gpu = gpu_digest is not None
    if gpu:
        for f in [data2 / "step", *data2.glob("digest-*"), *data2.glob("verify-*")]:
            f.unlink(missing_ok=True)  # the restored process writes them again
    n0 = 0 if gpu else len(counter(data2 / "counter.log"))
    pcfg = pod_config("gpucr-demo-new", namespace="default", cgroup_parent=info["cgroup_parent"],
                      log_directory=str(work / "logs2"))
    pod_id = cri.run_pod_sandbox(pcfg)
    try:
        ann = {"gpucr.io/restore-from": name}
        if gpu:
            cfg = gpu_pod.gpu_container_config(data2, float(os.environ.get("GPUCR_DEMO_GIB", "1")))
            for k, v in ann.items():
                cfg.annotations[k] = v
        else:
            cfg = container_config("counter", info["busybox_image"], command=["/bin/sh", "-c", "exit 3"],
                                   mounts=[(str(data2), "/data", False)], annotations=ann)
            cfg.linux.security_context.namespace_options.pid = cri_pb.CONTAINER
        say(f"a NEW pod ({pod_id[:12]}), its container annotated gpucr.io/restore-from: {name} and its /data "
            f"volume at another host path ({data2})")
        cid = cri.create_container(pod_id, cfg, pcfg)
        gpucr_said("\n".join(ln.split(" INFO ", 1)[-1] for ln in plog.new().splitlines() if "restored from" in ln))
        cri.start_container(cid)
        if gpu:
            wait(lambda: gpu_pod.step(data2) > 0, "the restored training to step", timeout=300)
            resumed = gpu_pod.step(data2)
            same = gpu_pod.verify(data2, "new-pod") == gpu_digest
            after: list[int] = [resumed]
            continued = same and resumed >= at_ckpt[0]
        else:
            after = wait(lambda: counter(data2 / "counter.log")[n0:][:3] if
                         len(counter(data2 / "counter.log")) >= n0 + 3 else None, "the counter in the new pod")
            continued = at_ckpt[0] <= after[0] <= at_ckpt[1] + 2
        gpucr_said(flog.new() or "(no front log lines)", "  gpucr criu front")
        state = state_name(cri.container_status(cid)[0].state)
        if gpu:
            say(f"restored into the new pod: CRI says {state}; training continues at step {after[0]} (checkpointed "
                f"between steps {at_ckpt[0]} and {at_ckpt[1]}); GPU data "
                f"{'bit-identical' if same else 'DIFFERENT'} to before the checkpoint")
        else:
            say(f"restored into the new pod: CRI says {state}; the counter continues {after[0]}, {after[1]}, "
                f"{after[2]} ({'from its checkpointed value' if continued else 'NOT from the checkpoint'})")
        cri.stop_container(cid, 0)
        cri.remove_container(cid)
        say("the restored container stopped and removed through CRI like any other")
        return {"pod_id": pod_id, "container_id": cid, "state": state, "checkpoint": name,
                "at_checkpoint": at_ckpt, "after_restore": after, "continued": continued,
                **({"gpu_data_identical": same} if gpu else {})}
    finally:
        cri.stop_pod_sandbox(pod_id)
        cri.remove_pod_sandbox(pod_id)


def main() -> int:
    version = os.environ.get("GPUCR_DEMO_CONTAINERD", "2.1.9")
    # root's alone: the CRIU front refuses a route or configuration under a directory others can write (/var/tmp)
    work = Path(tempfile.mkdtemp(prefix="gpucr-demo-", dir=TEST_ROOT))
    os.chmod(work, 0o700)
    route = work / "front"
    # the runtime binary is gpucr's runc wrapper (as install/front.sh install makes it): it restores gpucr.io/restore-from
    env = {**os.environ, "GPUCR_INSTANCE": INSTANCE, "GPUCR_CRIU_DIR": str(route / "path"),
           "GPUCR_RUNC_DIR": str(route / "bin")}
    run(["bash", str(REPO / "install/front.sh"), "route", "--dir", str(route), "--real-criu",
         str(TEST_ROOT / "bin/criu"), "--log-dir", str(work / "log")], env={**env, "GPUCR_FRONT_PYTHON": sys.executable})
    gpu = gpu_pod.has_gpu() and not os.environ.get("GPUCR_DEMO_CPU")
    node_conf = work / "config.toml"
    with (route / "path/front.conf").open("a") as f:
        f.write(f"node_config = {node_conf}\n")  # the front's CUDA hooks read the node's state dir from it
        f.write(f"cache_dir = {work / 'front-cache'}\n")  # the demo leaves nothing in /var/lib/gpucr
    start = subprocess.run(["bash", str(REPO / "install/containerd.sh"), "start", version], text=True,
                           stdout=subprocess.PIPE, env=env)
    if start.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        return 1
    info = json.loads(Path(start.stdout.strip().splitlines()[-1]).read_text())
    ctr = [info["ctr"], "--address", info["address"], "-n", "k8s.io"]
    ctr_env = {**env, "PATH": f"{route / 'path'}:{info['bin_dir']}:{os.environ.get('PATH', '')}"}
    say(f"private containerd {info['version']} up ({info['address']}); runc finds gpucr's CRIU front as `criu`")
    plugin_proc = None
    result: dict[str, object] = {}
    ckpt_ref = "localhost/gpucr-demo-checkpoint:1"
    restored = "gpucr-demo-restored"
    try:
        # -- gpucr's NRI plugin: the checkpoint policy --------------------------------------------------------
        # the OCI hook as a node has it: a root-owned launcher of a root-owned copy of gpucr's code (removed with work)
        hook = work / "gpucr-hook"
        run(["bash", str(REPO / "install/hook.sh"), "install", "--path", str(hook), "--prefix", str(work / "lib")])
        conf = node_conf
        ckpts = work / "checkpoints"
        ckpts.mkdir(mode=0o700)
        conf.write_text(f'state_dir = "{work / "state"}"\ncriu_config_dir = "{work / "criu"}"\n'
                        f'hook_path = "{hook}"\ncheckpoint_root = "{ckpts}"\ncriu_path = "{TEST_ROOT / "bin/criu"}"\n')
        plog = Log(work / "plugin.log")
        plugin_proc = subprocess.Popen([sys.executable, "-m", "nri_plugin.cli.main", "plugin", "--socket",
                                        info["nri_socket"], "--config", str(conf), "--log-file", str(plog.path)],
                                       cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait(lambda: plog.path.exists() and "synchronized" in plog.path.read_text(), "the plugin to register")
        say("gpucr's NRI plugin registered with containerd")
        gpucr_said("\n".join(ln.split(" INFO ", 1)[-1] for ln in plog.new().splitlines()
                              if "subscribed to" in ln or "state dir" in ln))

        # -- a pod that opts in -------------------------------------------------------------------------------
        data = work / "data"
        data.mkdir()
        flog = Log(work / "log" / "criu-front.log")
        with CriClient(info["address"], timeout_s=60) as cri:
            pcfg = pod_config("gpucr-demo", namespace="default", cgroup_parent=info["cgroup_parent"],
                              log_directory=str(work / "logs"),
                              annotations={"gpucr.io/checkpoint": "enabled"})
            pod_id = cri.run_pod_sandbox(pcfg)
            print(f"pod id: {pod_id}", flush=True)
            if gpu:
                gpu_pod.hostroot_image(work / "hostroot.tar")
                run([*ctr, "images", "import", str(work / "hostroot.tar")], env=ctr_env)
                cfg = gpu_pod.gpu_container_config(data, float(os.environ.get("GPUCR_DEMO_GIB", "1")))
                say("an NVIDIA GPU is present: the pod trains a model on it, holding random GPU data")
            else:
                cfg = container_config("counter", info["busybox_image"], command=["/bin/sh", "-c", COUNTER],
                                       mounts=[(str(data), "/data", False)])
                cfg.linux.security_context.namespace_options.pid = cri_pb.CONTAINER  # kubelet default
            cid = cri.create_container(pod_id, cfg, pcfg)
            cri.start_container(cid)
            print(f"container id: {cid}", flush=True)
            rec = load_record(work / "state", cid)
            say("CRI created the container; gpucr's plugin decided at CreateContainer:")
            gpucr_said(f"managed ({rec.reason}); CRIU config {rec.criu_config} set as org.criu.config")
            gpucr_said(f"CRIU options: {', '.join(ln.split('#')[0].strip() for ln in Path(rec.criu_config).read_text().splitlines() if ln and not ln.startswith('#'))}")
            gpucr_said(f"createRuntime hook recorded pid {rec.pid}, cgroup {rec.cgroup}")
            if gpu:
                wait(lambda: gpu_pod.step(data) >= 5, "training to start", timeout=300)
                digest0 = json.loads((data / "ready").read_text())["digest"]
            else:
                wait(lambda: len(counter(data / "counter.log")) >= 4, "the counter to run")

            # -- checkpoint with a standard command, while running --------------------------------------------
            say(f"checkpointing the running container: ctr c checkpoint --task --rw --image {cid[:12]} {ckpt_ref}")
            t0 = time.monotonic()
            run([*ctr, "c", "checkpoint", "--task", "--rw", "--image", cid, ckpt_ref], env=ctr_env)
            at_ckpt = gpu_pod.step(data) if gpu else counter(data / "counter.log")[-1]
            say(f"checkpoint done in {time.monotonic() - t0:.2f} s, {'training step' if gpu else 'counter'} was at "
                f"{at_ckpt}; the container keeps running ({state_name(cri.container_status(cid)[0].state)})")
            gpucr_said(flog.new() or "(no front log lines)", "  gpucr criu front")

            # -- a second checkpoint, through CRI, into the node's checkpoint root -------------------------------
            name2 = "train-1" if gpu else "counter-1"
            say(f"checkpointing it again through the runtime's API: gpucr checkpoint {cid[:12]} --via-runtime "
                f"--to {ckpts / name2}")
            lo2 = gpu_pod.step(data) if gpu else counter(data / "counter.log")[-1]
            run([sys.executable, "-m", "nri_plugin.cli.main", "checkpoint", cid, "--via-runtime",
                 "--leave-running", "--to", str(ckpts / name2), "--address", info["address"],
                 "--config", str(conf)],
                cwd=REPO, env=ctr_env)
            at_ckpt2 = (lo2, gpu_pod.step(data) if gpu else counter(data / "counter.log")[-1])  # it ran on meanwhile
            say(f"checkpoint {name2} sealed (gpucr.json with a manifest); the "
                f"{'training step' if gpu else 'counter'} was at {at_ckpt2[0]}..{at_ckpt2[1]} while it was taken")

            # -- kill it ---------------------------------------------------------------------------------------
            cri.stop_container(cid, 0)
            time.sleep(1.0)
            killed_at = gpu_pod.step(data) if gpu else counter(data / "counter.log")[-1]
            say(f"container killed (CRI StopContainer); its {'training' if gpu else 'counter'} stopped at {killed_at}")
            n_before = 0 if gpu else len(counter(data / "counter.log"))

            # -- bring it back from the checkpoint -------------------------------------------------------------
            say(f"restoring: ctr c restore --live --rw {restored} {ckpt_ref}")
            run([*ctr, "c", "restore", "--live", "--rw", restored, ckpt_ref], env=ctr_env)
            if gpu:
                (data / "step").unlink(missing_ok=True)  # the restored process writes it again
                wait(lambda: gpu_pod.step(data) > 0, "the restored training to step", timeout=300)
                resumed = gpu_pod.step(data)
                same = gpu_pod.verify(data, "restored") == digest0
                gpucr_said(flog.new() or "(no front log lines)", "  gpucr criu front")
                continued = same and at_ckpt <= resumed
                after = [resumed]
                say(f"restored: training continues at step {resumed} (checkpointed at {at_ckpt}, killed at "
                    f"{killed_at}); GPU data {'bit-identical' if same else 'DIFFERENT'} to before the checkpoint")
            else:
                after = wait(lambda: counter(data / "counter.log")[n_before:][:3] if
                             len(counter(data / "counter.log")) >= n_before + 3 else None, "the restored counter")
                gpucr_said(flog.new() or "(no front log lines)", "  gpucr criu front")
                continued = at_ckpt <= after[0] <= at_ckpt + 2
                say(f"restored: the counter continues {after[0]}, {after[1]}, {after[2]} "
                    f"({'from its checkpointed value ' + str(at_ckpt) if continued else 'NOT from the checkpoint'})")
            task = run([*ctr, "t", "ls"], env=ctr_env).stdout
            state = "running" if any(ln.startswith(restored) and "RUNNING" in ln for ln in task.splitlines()) \
                else "unknown"
            result = {"containerd": cri.version().runtime_version, "workload": "gpu-training" if gpu else "counter",
                      "pod_id": pod_id, "container_id": cid,
                      "restored_container": restored, "state": state, "counter_at_checkpoint": at_ckpt,
                      "counter_after_restore": after, "continued": continued}
            # cleanup of what ctr made; CRI's own objects go with the pod
            subprocess.run([*ctr, "t", "kill", "-s", "KILL", restored], env=ctr_env, capture_output=True)
            time.sleep(0.5)
            subprocess.run([*ctr, "t", "rm", "-f", restored], env=ctr_env, capture_output=True)
            subprocess.run([*ctr, "c", "rm", restored], env=ctr_env, capture_output=True)
            cri.remove_container(cid)
            cri.stop_pod_sandbox(pod_id)
            cri.remove_pod_sandbox(pod_id)
            result["new_pod"] = new_pod_restore(cri, info, work, data, name2, at_ckpt2, plog, flog,
                                                gpu_digest=digest0 if gpu else None)
            result["continued"] = bool(result["continued"]) and result["new_pod"]["continued"]
    except GpucrError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        if os.environ.get("GPUCR_DEMO_KEEP"):
            say(f"GPUCR_DEMO_KEEP set: leaving {work} and the instance for inspection "
                f"(install/containerd.sh stop {version} with GPUCR_INSTANCE={INSTANCE} cleans up)")
            return 1
        return 1
    finally:
        if os.environ.get("GPUCR_DEMO_KEEP") and not result:
            return 1  # noqa: B012
        if plugin_proc is not None:
            plugin_proc.terminate()
            plugin_proc.wait(10)
        subprocess.run(["bash", str(REPO / "install/containerd.sh"), "stop", version], env=env, check=False)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0 if result.get("continued") else 1


if __name__ == "__main__":
    sys.exit(main())
