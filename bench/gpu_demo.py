"""`make demo`'s story on a GPU machine without network, with gpucr and its CRIU installed from the packages.

    python3 bench/gpu_demo.py OUT_DIR --stage STAGE [--gib 1] [--pkgs DIR]

``bench/_stage.py`` installs gpucr's .debs (gpucr, gpucr-criu) and containerd/runc with apt-get and lays out the test
rig's root from them; then ``demo/demo.py`` runs unchanged (what ``make demo`` runs after building its venv, which
needs PyPI: the package's pinned wheels stand in for it). With a GPU it detects it and tells the GPU story: a
PyTorch pod checkpointed with ``ctr c checkpoint --task``, killed, ``ctr c restore``d; checkpointed again through
the runtime's API and restored into a NEW pod through ``gpucr.io/restore-from``; both restores bit-identical with
training going on. Writes OUT/demo.log, OUT/demo_gpu.json (the demo's last line) and OUT/demo_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stage import REPO, out_of, setup, sh  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n", 1)[0].split()))
    ap.add_argument("out", type=Path, help="where the log and the summary go")
    ap.add_argument("--stage", type=Path, required=True, help="stage dir: debs-ctrd/, images/ (and pkgs/)")
    ap.add_argument("--pkgs", type=Path, default=None, help="where gpucr's .debs are (default: STAGE/pkgs or dist/)")
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of random GPU data the training pod holds")
    ap.add_argument("--timeout", type=float, default=540.0, help="seconds the demo may take")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = setup(args.stage, args.pkgs)
    env["GPUCR_DEMO_GIB"] = str(args.gib)
    gpu = out_of(sh(["nvidia-smi", "--query-gpu=name,driver_version,uuid", "--format=csv,noheader"]))
    t = time.monotonic()
    log = args.out / "demo.log"
    with log.open("w") as f:
        try:
            r = subprocess.run([sys.executable, str(REPO / "demo/demo.py")], cwd=REPO, env=env, stdout=f,
                               stderr=subprocess.STDOUT, timeout=args.timeout, stdin=subprocess.DEVNULL)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    lines = log.read_text().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    doc = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "host": platform.node(), "gpu": gpu,
           "rc": rc, "seconds": round(time.monotonic() - t, 1), "result": result,
           "gpucr": out_of(sh(["/usr/bin/gpucr", "--version"])),
           "criu": out_of(sh(["/usr/lib/gpucr/criu/criu", "--version"])).splitlines()[0:1]}
    (args.out / "demo_gpu.json").write_text(json.dumps(doc, indent=1))
    new_pod = result.get("new_pod") or {}
    md = [f"# `make demo`'s story on a GPU machine, gpucr installed from its packages",
          "",
          f"- date: {doc['date']}; machine: {doc['host']}; GPU: {gpu}; kernel {os.uname().release}",
          f"- gpucr: {doc['gpucr']} (gpucr_*.deb) and CRIU {' '.join(doc['criu'])} (gpucr-criu_*.deb), installed "
          "with apt-get by bench/_stage.py; containerd/runc from their .debs; `demo/demo.py` ran unchanged "
          f"(bench/gpu_demo.py), exit status {rc} after {doc['seconds']} s",
          f"- workload: {result.get('workload')}; ctr restore continued: {result.get('continued')}; new pod through "
          f"`gpucr.io/restore-from` ({new_pod.get('checkpoint')}): state {new_pod.get('state')}, step at checkpoint "
          f"{new_pod.get('at_checkpoint')}, after restore {new_pod.get('after_restore')}, GPU data identical "
          f"{new_pod.get('gpu_data_identical')}",
          "", "```", *lines, "```", ""]
    (args.out / "demo_gpu.md").write_text("\n".join(md))
    print("\n".join(md[:6]))
    return rc


if __name__ == "__main__":
    sys.exit(main())
