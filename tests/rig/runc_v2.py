#!/usr/bin/python3 -SE
"""Test-rig only: a ``runc`` for the cgroup-v2 leg (tests/rig/cgroup_v2.sh), never shipped or installed on a node.

On this hybrid VM a private mount namespace with cgroup2 on /sys/fs/cgroup delegates only ``hugetlb``, but
containerd writes cpu shares (and ``ctr run`` more) into every spec, so runc fails on ``cpu.weight``. Before
``create``/``run``/``restore`` this drops from ``linux.resources`` of the bundle's config.json the parts whose
controller the v2 root does not offer (and the same from the resources ``runc update`` reads), then execs the real runc (path in RUNC below, set when installed) with the
same arguments and environment (so a CRIU front first on PATH is still found). The bundle is ``--bundle``/``-b``
or, as runc does, the working directory.
"""

import json
import os
import sys

RUNC = "@RUNC@"
CGROUP_ROOT = "/sys/fs/cgroup"
GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
NEEDS = {"cpu": ("cpu", "cpuset"), "memory": ("memory",), "pids": ("pids",), "blockIO": ("io",),
         "hugepageLimits": ("hugetlb",)}


def bundle_of(args: list[str]) -> str:
    for i, a in enumerate(args):
        if a in ("--bundle", "-b") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--bundle="):
            return a.split("=", 1)[1]
    return os.getcwd()


def drop_missing(res: dict) -> bool:
    """Remove from ``res`` what the v2 root cannot enforce; True when something went."""
    with open(os.path.join(CGROUP_ROOT, "cgroup.controllers")) as f:
        have = set(f.read().split())
    drop = [k for k, ctrls in NEEDS.items() if k in res and not all(c in have for c in ctrls)]
    for k in drop:
        del res[k]
    return bool(drop)


def strip(bundle: str) -> None:
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        return
    if not drop_missing(spec.get("linux", {}).get("resources") or {}):
        return
    tmp = path + ".rig-tmp"
    with open(tmp, "w") as f:
        json.dump(spec, f)
    os.replace(tmp, path)


def subcommand(args: list[str]) -> str | None:
    """The first word that is neither a global option nor its value (``runc --root R --log L create ...``)."""
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in GLOBAL_WITH_VALUE:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def update_resources(args: list[str]) -> None:
    """``runc update -r FILE|-`` (go-runc, as the shim calls it: ``--resources=-`` with JSON on stdin): filter the
    resources the same way and hand them to runc on stdin."""
    for i, a in enumerate(args):
        if a in ("-r", "--resources") and i + 1 < len(args):
            src, at, new = args[i + 1], i + 1, "-"
            break
        if a.startswith(("--resources=", "-r=")):
            src, at, new = a.split("=", 1)[1], i, "--resources=-"
            break
    else:
        return
    with (sys.stdin if src == "-" else open(src)) as f:
        res = json.load(f)
    drop_missing(res)
    r, w = os.pipe()
    os.write(w, json.dumps(res).encode())  # a few hundred bytes: fits the pipe buffer
    os.close(w)
    os.dup2(r, 0)
    args[at] = new


def main() -> None:
    args = sys.argv[1:]
    sub = subcommand(args)
    if sub in ("create", "run", "restore"):
        strip(bundle_of(args))
    elif sub == "update":
        update_resources(args)
    os.execv(RUNC, [RUNC, *args])


if __name__ == "__main__":
    main()
