"""A PyTorch training pod checkpointed through CRI (the kubelet's API path) and restored into a NEW pod with
``gpucr.io/restore-from`` (run on a GPU machine).

    python3 bench/gpu_restore.py OUT_DIR --stage STAGE [--gib 1] [--timeout 300] [--nri-timeout 2s] [--cross-gpu
        [--explicit-map]] [--code TEXT]

STAGE is bench/_stage.py's (``debs-ctrd/`` containerd 2.1.9 and runc, ``images/``, gpucr's own .debs in STAGE/pkgs,
$GPUCR_DEBS or dist/); the generated ``_pb`` modules must be in the tree.

1. A private containerd 2.1.9 whose runtime binary is gpucr's runc wrapper (``install/front.sh route``: DIR/bin/runc,
   the CRIU front at DIR/path/criu; the OCI hook by ``install/hook.sh install``, all in a root-only dir) and gpucr's
   NRI plugin with a ``checkpoint_root``; NRI ``plugin_request_timeout`` at containerd's default 2s unless
   ``--nri-timeout`` says otherwise. A CRI pod opted in with ``gpucr.io/checkpoint: enabled`` trains an MLP on
   the GPU while holding GIB of random data (torch.rand); each step appends ``step loss`` to /data/loss.log, and a
   digest of the GPU data is written on request.
2. CRI CheckpointContainer (what the kubelet's checkpoint API calls) writes ROOT/NAME/checkpoint.tar while training
   goes on; ``gpucr seal ROOT/NAME`` makes it a gpucr checkpoint (README: "Restore into a new pod"). The original
   container and its pod are stopped and removed through CRI.
3. A NEW pod's container with ``gpucr.io/restore-from: NAME`` (same image and volume paths) is created and started:
   the plugin checks the checkpoint (metadata, sizes, GPUs, volumes: bounded work, within the NRI timeout) and leaves
   a ticket; the runc wrapper verifies the digests, extracts the archive's images and turns ``create`` into ``runc
   restore``; the front restores the CUDA state. Checked: the GPU data digest equals the checkpointed one (bit-identical), the step
   counter continues from the checkpointed step, the losses of the replayed steps equal the original's and the loss
   keeps decreasing; CRI lists the container running, exec works; it is stopped and removed through CRI; the
   staging dir is gone and the checkpoint unchanged.

``--cross-gpu`` (a machine with two GPUs of one model, e.g. ``nvidia-h200-x2``): the training pod is assigned GPU 0
(``NVIDIA_VISIBLE_DEVICES=<GPU 0's UUID>``; the container gets every GPU device node, no NVIDIA runtime here, and
trains on cuda:0 = GPU 0), the new pod GPU 1 (``NVIDIA_VISIBLE_DEVICES=<GPU 1's UUID>``): the plugin's spec rewrite
maps GPU0->GPU1 and completes the pairs to cover every GPU one-to-one (GPU1->GPU0), the front hands the map to the
driver, and nvidia-smi must show the restored process on GPU 1 (and nothing on GPU 0). ``--explicit-map`` also sets
``gpucr.io/gpu-map: GPU0=GPU1,GPU1=GPU0`` on the new container instead of relying on the plugin's pairing.
 OUT_DIR/gpu_restore.json, OUT_DIR/gpu_restore.md and the logs under OUT_DIR/extra/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _workload import WORKLOAD as _BASE  # noqa: E402
from gpu_front import REPO, ROOT, Instance, log, sh  # noqa: E402
from gpu_http import (  # noqa: E402
    checkpoint_node, front_excerpt, gpu_apps, install_front, phases, pod_bench, versions, wait_for,
)

from nri_plugin.cli.doctor import parse_duration  # noqa: E402

from demo.gpu_pod import gpu_container_config, verify  # noqa: E402

NAME = "train-ck"
# bench/_workload.py's workload, each step's loss appended to /data/loss.log (opened and closed per step: no open file
# for CRIU to carry)
WORKLOAD = _BASE.replace('    put("step", f"{step} {lv:.9g}")\n',
                         '    put("step", f"{step} {lv:.9g}")\n'
                         '    with open(os.path.join(d, "loss.log"), "a") as f:\n'
                         '        f.write(f"{step} {lv:.9g}\\n")\n')
# seeded per process start: a fresh start cannot reproduce the data, so an identical digest proves the restore
WORKLOAD = WORKLOAD.replace("torch.manual_seed(1234)", "torch.manual_seed(int.from_bytes(os.urandom(8), 'little'))")
assert "loss.log" in WORKLOAD and "os.urandom" in WORKLOAD, "bench/_workload.py's workload changed: update the edits"


def losses(d: Path) -> list[tuple[int, float]]:
    p = d / "loss.log"
    out = []
    for ln in (p.read_text().splitlines() if p.exists() else []):
        parts = ln.split()
        if len(parts) == 2:
            out.append((int(parts[0]), float(parts[1])))
    return out


def train_config(data: Path, gib: float, annotations: dict[str, str], visible: str = "") -> Any:
    from nri_plugin.cri._pb import api_pb2 as pb

    conf = gpu_container_config(data, gib)
    (data / "work.py").write_text(WORKLOAD)
    for k, v in annotations.items():
        conf.annotations[k] = v
    if visible:  # the GPU the pod is assigned, as a device plugin says it: the env gpucr's plugin reads
        conf.envs.add(key="NVIDIA_VISIBLE_DEVICES", value=visible)
    conf.linux.security_context.namespace_options.pid = pb.CONTAINER  # the kubelet's default (no shared PID ns)
    return conf


def gpu_uuids() -> list[str]:
    out = sh(["nvidia-smi", "--query-gpu=uuid", "--format=csv,noheader"]).stdout.split()
    return [u.strip() for u in out if u.strip().startswith("GPU-")]


def apps_by_gpu() -> dict[int, str]:
    """pid -> GPU UUID of every compute process (nvidia-smi)."""
    r = sh(["nvidia-smi", "--query-compute-apps=pid,gpu_uuid", "--format=csv,noheader"])
    out: dict[int, str] = {}
    for ln in r.stdout.splitlines():
        pid, _, uuid = (x.strip() for x in ln.partition(","))
        if pid.isdigit():
            out[int(pid)] = uuid
    return out


def timed(res: dict[str, Any], key: str, fn: Any, *a: Any, **kw: Any) -> Any:
    t0 = time.monotonic()
    try:
        return fn(*a, **kw)
    finally:
        res.setdefault("timings_s", {})[key] = round(time.monotonic() - t0, 2)


def run(args: argparse.Namespace, env: dict[str, str], res: dict[str, Any]) -> None:
    from nri_plugin.cri import CriClient, pod_config

    criu = ROOT / "bin/criu"
    res["versions"] = versions(criu)
    work = Path("/var/lib/gpucr-restore-bench")  # not /tmp: the CRIU front refuses a route others could change
    route, hook, node, ckroot = checkpoint_node(work)
    install_front(env, work, criu, args.hooks, node)
    # containerd's runtime binary is the route's runc wrapper, as install/front.sh install sets BinaryName on a node
    inst = Instance({**env, "GPUCR_RUNC_DIR": str(route / "bin"), "GPUCR_NRI_REQUEST_TIMEOUT": args.nri_timeout},
                    "restore", route / "path")
    res["nri_plugin_request_timeout"] = args.nri_timeout
    uuids = gpu_uuids()
    res["gpu_uuids"] = uuids
    g_from = g_to = ""
    if args.cross_gpu:
        if len(uuids) < 2:
            raise SystemExit(f"--cross-gpu needs two GPUs; nvidia-smi lists {uuids}")
        g_from, g_to = uuids[0], uuids[1]
        res["cross_gpu"] = {"from": g_from, "to": g_to, "explicit_map": args.explicit_map}
    extra = args.out / "extra"
    extra.mkdir(exist_ok=True)
    plugin = None
    d = work / "data"
    gpucr = [sys.executable, "-m", "nri_plugin.cli.main"]
    try:
        plugin = subprocess.Popen([*gpucr, "plugin", "--socket", inst.info["nri_socket"], "--config", str(node),
                                   "--log-file", str(extra / "plugin.log")], env=env, cwd=REPO)
        time.sleep(3)
        cri = CriClient(inst.info["address"], timeout_s=300)
        opted = {"gpucr.io/checkpoint": "enabled"}

        # -- 1. the training pod ----------------------------------------------------------------------------------
        pcfg = pod_config("train", cgroup_parent=inst.info["cgroup_parent"], annotations=opted,
                          log_directory=str(d / "logs"))
        pod = cri.run_pod_sandbox(pcfg)
        cid = cri.create_container(pod, train_config(d, args.gib, {}, g_from), pcfg)
        t0 = time.monotonic()
        cri.start_container(cid)
        wait_for(lambda: (d / "ready").exists() and len(losses(d)) >= 20, 240, "the training pod")
        res["timings_s"] = {"pod_start_to_training": round(time.monotonic() - t0, 2)}
        ready = json.loads((d / "ready").read_text())
        res["original"] = {"container": cid, "pid": ready["pid"], "digest": ready["digest"],
                           "gpu_apps": gpu_apps(), "apps_by_gpu": apps_by_gpu()}
        log(f"training: {res['original']}")

        # -- 2. CRI CheckpointContainer + gpucr seal -------------------------------------------------------------
        ck = ckroot / NAME
        ck.mkdir(mode=0o700)
        lo = losses(d)[-1][0]
        log(f"CRI CheckpointContainer -> {ck / 'checkpoint.tar'} at step {lo}")
        timed(res, "cri_checkpoint", cri.checkpoint_container, cid, str(ck / "checkpoint.tar"),
              timeout_s=int(args.timeout))
        hi = losses(d)[-1][0]
        res["checkpoint"] = {"steps_during": [lo, hi], "archive_bytes": (ck / "checkpoint.tar").stat().st_size}
        wait_for(lambda: losses(d)[-1][0] >= hi + 20, 60, "training to go on after the checkpoint")
        res["checkpoint"]["training_went_on"] = [hi, losses(d)[-1][0]]
        res["checkpoint"]["digest_after"] = verify(d, "after-ckpt")
        r = timed(res, "gpucr_seal", sh, [*gpucr, "seal", str(ck), "--config", str(node), "--json"], env=env,
                  cwd=REPO)
        if r.returncode:
            raise SystemExit(f"gpucr seal failed: {r.stderr}")
        res["seal"] = json.loads(r.stdout)
        st = (ck / "checkpoint.tar").stat()
        log(f"sealed: {res['seal']}")

        # -- the original goes away --------------------------------------------------------------------------------
        timed(res, "original_stop", cri.stop_container, cid, 0)
        cri.remove_container(cid)
        cri.stop_pod_sandbox(pod)
        cri.remove_pod_sandbox(pod)
        before = losses(d)
        res["original"]["last_step"] = before[-1][0]
        res["original"]["gpu_apps_after_removal"] = gpu_apps()
        log(f"original removed at step {before[-1][0]}; nvidia-smi: {res['original']['gpu_apps_after_removal']!r}")
        for f in ("ready", "step"):
            (d / f).unlink(missing_ok=True)

        # -- 3. a new pod restored from the annotation --------------------------------------------------------------
        pcfg2 = pod_config("train-restored", cgroup_parent=inst.info["cgroup_parent"], annotations=opted,
                           log_directory=str(d / "logs2"))
        pod2 = cri.run_pod_sandbox(pcfg2)
        t1 = time.monotonic()
        ann = {"gpucr.io/restore-from": NAME}
        if args.cross_gpu and args.explicit_map:
            ann["gpucr.io/gpu-map"] = f"{g_from}={g_to},{g_to}={g_from}"
        new = timed(res, "restore_create_container", cri.create_container, pod2,
                    train_config(d, args.gib, ann, g_to), pcfg2)
        log(f"created {new} with gpucr.io/restore-from: {NAME}; starting (runc restore)")
        timed(res, "restore_start_container", cri.start_container, new)
        wait_for(lambda: len(losses(d)) >= len(before) + 1, 120, "the restored process's first step")
        res["timings_s"]["restore_create_to_first_step"] = round(time.monotonic() - t1, 2)
        wait_for(lambda: len(losses(d)) >= len(before) + 200, 120, "200 restored steps")
        status, info = cri.container_status(new, verbose=True)
        npid = int(info.get("info", {}).get("pid", 0)) if isinstance(info.get("info"), dict) else 0
        digest = verify(d, "restored")
        after = losses(d)[len(before):]
        orig = dict(before)
        replayed = [(s, v) for s, v in after if s in orig]
        first = after[0][0]
        ex = cri.exec_sync(new, ["/bin/sh", "-c", "echo alive"])
        listed = new in [c.id for c in cri.list_containers(pod2)]
        res["restored"] = {
            "container": new, "pid": npid, "state": int(status.state), "listed_by_cri": listed,
            "exec": [ex.exit_code, ex.stdout.decode(errors="replace").strip()],
            "first_step": first, "checkpoint_steps": [lo, hi], "continues_from_checkpoint": lo <= first - 1 <= hi,
            "steps_consecutive": [s for s, _ in after] == list(range(first, first + len(after))),
            "digest": digest, "digest_identical": digest == res["original"]["digest"],
            "replayed_steps": len(replayed),
            "replayed_losses_identical": bool(replayed) and all(orig[s] == v for s, v in replayed),
            "loss_at_checkpoint": orig.get(first - 1), "loss_first_after": after[0][1], "loss_last": after[-1][1],
            "last_step": after[-1][0], "gpu_apps": gpu_apps(), "apps_by_gpu": apps_by_gpu()}
        rs = res["restored"]
        k = min(50, len(after) // 2)
        rs["front_restore_success"] = any("RESTORE success=True" in ln for ln in front_excerpt(work / "front-log"))
        plog = (extra / "plugin.log").read_text(errors="replace") if (extra / "plugin.log").exists() else ""
        rs["plugin_restore_line"] = next((ln for ln in plog.splitlines() if "will be restored from" in ln), "")
        nri_s = parse_duration(args.nri_timeout) or 0.0
        rs["create_within_nri_timeout"] = res["timings_s"]["restore_create_container"] < nri_s
        if args.cross_gpu:
            on = rs["apps_by_gpu"].get(npid)
            rs["restored_on_gpu"] = on
            rs["on_target_gpu"] = on == g_to and g_from not in rs["apps_by_gpu"].values()
        rs["loss_decreasing"] = (sum(v for _, v in after[-k:]) / k < sum(v for _, v in after[:k]) / k
                                 and after[-1][1] < (rs["loss_at_checkpoint"] or float("inf")))
        log(f"restored: {json.dumps({k: v for k, v in rs.items() if k != 'gpu_apps'})}")
        timed(res, "restored_stop", cri.stop_container, new, 0)
        rs["state_after_stop"] = int(cri.container_status(new)[0].state)
        cri.remove_container(new)
        rs["removed"] = new not in [c.id for c in cri.list_containers(pod2)]
        cri.stop_pod_sandbox(pod2)
        cri.remove_pod_sandbox(pod2)
        rs["staging_left"] = sorted(p.name for p in (ckroot / ".restore").glob("*")) \
            if (ckroot / ".restore").exists() else []
        st2 = (ck / "checkpoint.tar").stat()
        rs["checkpoint_unchanged"] = (st.st_size, st.st_mtime_ns) == (st2.st_size, st2.st_mtime_ns)
        res["timings_s"]["restore_total_s"] = round(time.monotonic() - t1, 2)
        res["verdict"] = "PASS" if (rs["digest_identical"] and rs["front_restore_success"] and rs["continues_from_checkpoint"]
                                    and rs["steps_consecutive"] and rs["loss_decreasing"] and rs["state"] == 1
                                    and listed and ex.exit_code == 0 and rs["state_after_stop"] == 2
                                    and rs["removed"] and not rs["staging_left"] and rs["checkpoint_unchanged"]
                                    and res["checkpoint"]["digest_after"] == res["original"]["digest"]
                                    and rs["create_within_nri_timeout"]
                                    and (rs.get("on_target_gpu") if args.cross_gpu else True)) else "FAIL"
    finally:
        if plugin is not None:
            plugin.terminate()
        res["front_log"] = front_excerpt(work / "front-log")
        res["phases"] = phases(work / "front-log/criu-front.log")
        for f in (work / "front-log").glob("*"):
            if f.is_file():
                shutil.copy(f, extra / f"front-{f.name}")
        for f in (d / "logs/train.log", d / "logs2/train.log", d / "loss.log"):
            if f.exists():
                shutil.copy(f, extra / f"{f.parent.name}-{f.name}")
        rl = sorted((ckroot / ".restore").rglob("restore.log")) if (ckroot / ".restore").exists() else []
        for f in rl:
            shutil.copy(f, extra / "criu-restore.log")
        inst.stop()


def markdown(res: dict[str, Any]) -> str:
    v, t = res.get("versions", {}), res.get("timings_s", {})
    o, c, rs = res.get("original", {}), res.get("checkpoint", {}), res.get("restored", {})
    lines = [
        f"- verdict: **{res.get('verdict', 'FAIL')}** (CRI CheckpointContainer + `gpucr seal`, original pod removed, "
        "a new pod restored through `gpucr.io/restore-from`: bit-identical GPU data, step counter and loss going on)",
        f"- date: {res['date']}; machine: {res['host']} ({v.get('gpu')}), kernel {v.get('kernel')}, {v.get('cpus')} "
        f"CPUs; THP `{v.get('thp')}`",
        f"- {v.get('containerd')} (NRI plugin_request_timeout {res.get('nri_plugin_request_timeout')}); "
        f"{v.get('runc')}; CRIU {v.get('criu')}; torch {v.get('torch')}; code: {res.get('code')}",
        f"- workload: a CRI pod (`gpucr.io/checkpoint: enabled`) training an MLP on the GPU while holding "
        f"{res.get('gib')} GiB of torch.rand data (nvidia-smi: `{o.get('gpu_apps')}`)",
        "", "| step | outcome |", "|---|---|",
        f"| pod start to training | {t.get('pod_start_to_training')} s |",
        f"| CRI CheckpointContainer into ROOT/{NAME}/checkpoint.tar (training went on) | "
        f"{t.get('cri_checkpoint')} s; archive {c.get('archive_bytes', 0) / 2**30:.2f} GiB; steps "
        f"{c.get('steps_during')} during it, {c.get('training_went_on')} after; GPU data unchanged: "
        f"{c.get('digest_after') == o.get('digest')} |",
        f"| `gpucr seal ROOT/{NAME}` (manifest: size and sha256 of every file) | {t.get('gpucr_seal')} s; "
        f"{res.get('seal', {}).get('kind')}, {res.get('seal', {}).get('files')} files |",
        f"| original container stopped, removed, its pod too | stop {t.get('original_stop')} s; last step "
        f"{o.get('last_step')}; nvidia-smi after: `{o.get('gpu_apps_after_removal') or 'no process'}` |",
        f"| new pod: CreateContainer with `gpucr.io/restore-from: {NAME}` (plugin: metadata, sizes, GPU map, "
        f"volumes, lock, ticket) | {t.get('restore_create_container')} s; within the NRI timeout "
        f"({res.get('nri_plugin_request_timeout')}): {rs.get('create_within_nri_timeout')} |",
        f"| StartContainer (runc wrapper: digests, archive extracted, `runc restore`; front: CUDA restore) | "
        f"{t.get('restore_start_container')} s;"
        f" first restored step {t.get('restore_create_to_first_step')} s after CreateContainer began |",
        f"| step counter | restored process's first step {rs.get('first_step')}, checkpoint taken between steps "
        f"{rs.get('checkpoint_steps')}: continues from the checkpoint: {rs.get('continues_from_checkpoint')}; "
        f"consecutive: {rs.get('steps_consecutive')} |",
        f"| GPU data (torch.rand, seeded from os.urandom at process start) digest | identical to the checkpointed "
        f"one: {rs.get('digest_identical')}; front logged RESTORE success: {rs.get('front_restore_success')} |",
        f"| loss | {rs.get('replayed_steps')} replayed steps with losses identical to the original's: "
        f"{rs.get('replayed_losses_identical')}; at checkpoint {rs.get('loss_at_checkpoint')}, first after "
        f"{rs.get('loss_first_after')}, at step {rs.get('last_step')} {rs.get('loss_last')}: decreasing "
        f"{rs.get('loss_decreasing')} |",
        f"| an ordinary CRI container | state RUNNING: {rs.get('state') == 1}; listed: {rs.get('listed_by_cri')}; "
        f"exec: {rs.get('exec')}; stopped in {t.get('restored_stop')} s (state EXITED: "
        f"{rs.get('state_after_stop') == 2}); removed: {rs.get('removed')} |",
        f"| afterwards | staging left: {rs.get('staging_left')}; checkpoint unchanged: "
        f"{rs.get('checkpoint_unchanged')}; nvidia-smi while restored: `{rs.get('gpu_apps')}` |",
        *([f"| GPU 0 -> GPU 1 (`--cross-gpu`{', explicit gpucr.io/gpu-map' if res['cross_gpu']['explicit_map'] else ''}"
           f") | original pid {o.get('pid')} on {o.get('apps_by_gpu', {}).get(o.get('pid'))}; restored pid "
           f"{rs.get('pid')} on {rs.get('restored_on_gpu')} (target {res['cross_gpu']['to']}): "
           f"{rs.get('on_target_gpu')}; plugin: `{rs.get('plugin_restore_line', '')[-200:]}` |"]
          if res.get("cross_gpu") else []),
        "", "Where the time went, from the front's log (s): " + ", ".join(
            f"{k.replace('_', ' ')} {x}" for k, x in res.get("phases", {}).items()) + ".",
        "", "gpucr's CRIU front (excerpt):", "", "```", *res.get("front_log", [])[:16], "```"]
    if res.get("error"):
        lines += ["", f"**Run failed**: {res['error']}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()),
                                 epilog="Writes OUT/gpu_restore.json, OUT/gpu_restore.md and logs under OUT/extra/.")
    ap.add_argument("out", type=Path, help="where the results and logs go")
    ap.add_argument("--stage", type=Path, required=True,
                    help="bench/gpu_front.py's stage dir (debs/ CRIU, debs-ctrd/ containerd 2.1.9 + runc, whl/, images/)")
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of torch.rand data the training pod holds (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds the CRI CheckpointContainer call may take (default 300)")
    ap.add_argument("--hooks", default="nri_plugin.handlers.front_cuda:make",
                    help="the CRIU front's hooks (default: gpucr's CUDA hooks)")
    ap.add_argument("--nri-timeout", default="2s",
                    help="containerd's NRI plugin_request_timeout (default: containerd's own default, 2s). The "
                         "plugin's CreateContainer work is bounded (no digest, no staging: those run in the runc "
                         "wrapper), so the default must do; a larger value only for comparisons")
    ap.add_argument("--cross-gpu", action="store_true",
                    help="checkpoint a pod assigned GPU 0, restore it into a pod assigned GPU 1 (needs two GPUs of "
                         "one model, e.g. nvidia-h200-x2): the plugin's GPU map, the restored process on GPU 1")
    ap.add_argument("--explicit-map", action="store_true",
                    help="with --cross-gpu: also set gpucr.io/gpu-map GPU0=GPU1,GPU1=GPU0 on the new container")
    ap.add_argument("--code", default="", help="which code ran (e.g. the commit), for the summary")
    args = ap.parse_args()
    if args.explicit_map and not args.cross_gpu:
        ap.error("--explicit-map goes with --cross-gpu")
    if parse_duration(args.nri_timeout) is None:
        ap.error(f"--nri-timeout {args.nri_timeout!r} is not a duration containerd takes (e.g. 2s, 500ms, 1m)")
    return pod_bench(args, "gpu_restore", run, markdown, error_chars=3000)


if __name__ == "__main__":
    sys.exit(main())
