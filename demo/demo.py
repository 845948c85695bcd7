#!/usr/bin/env python3
"""`make demo`: the main job on the local default.

Brings up a private containerd (2.1.9 by default; GPUCR_DEMO_CONTAINERD=1.7 for 1.7.24) with NRI, runs a CRI pod with
a counter workload, prints the pod and container ids, reads the container's status and the counter, then cleans up
(containerd stopped, nothing left running or mounted). The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nri_plugin.cri import CriClient, container_config, pod_config  # noqa: E402
from nri_plugin.cri.client import state_name  # noqa: E402
from nri_plugin.errors import GpucrError  # noqa: E402

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 1; done"


def say(msg: str) -> None:
    print(f"demo: {msg}", flush=True)


def main() -> int:
    version = os.environ.get("GPUCR_DEMO_CONTAINERD", "2.1.9")
    start = subprocess.run(["bash", str(REPO / "install/containerd.sh"), "start", version], text=True,
                           stdout=subprocess.PIPE)
    if start.returncode != 0:
        return 1
    info = json.loads(Path(start.stdout.strip().splitlines()[-1]).read_text())
    say(f"private containerd {info['version']} up: {info['address']} (NRI socket {info['nri_socket']})")
    result: dict[str, object] = {}
    try:
        with CriClient(info["address"], timeout_s=60) as cri:
            pcfg = pod_config("gpucr-demo", namespace="default", cgroup_parent=info["cgroup_parent"],
                              annotations={"gpucr.io/checkpoint": "enabled"})
            pod_id = cri.run_pod_sandbox(pcfg)
            print(f"pod id: {pod_id}", flush=True)
            cfg = container_config("counter", info["busybox_image"], command=["/bin/sh", "-c", COUNTER])
            cid = cri.create_container(pod_id, cfg, pcfg)
            cri.start_container(cid)
            print(f"container id: {cid}", flush=True)
            time.sleep(3)
            status, verbose = cri.container_status(cid, verbose=True)
            counter = cri.exec_sync(cid, ["cat", "/tmp/counter"]).stdout.decode().strip()
            say(f"container {status.metadata.name} is {state_name(status.state)}, host pid "
                f"{verbose.get('info', {}).get('pid')}, counter at {counter}")
            result = {"containerd": cri.version().runtime_version, "pod_id": pod_id, "container_id": cid,
                      "state": state_name(status.state), "counter": int(counter or 0)}
            cri.stop_container(cid, 2)
            cri.remove_container(cid)
            cri.stop_pod_sandbox(pod_id)
            cri.remove_pod_sandbox(pod_id)
    except GpucrError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    finally:
        subprocess.run(["bash", str(REPO / "install/containerd.sh"), "stop", version], check=False)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
