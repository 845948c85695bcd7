#!/usr/bin/python3 -SE
"""A chaining runtime standing in for nvidia-container-runtime (tests only).

What it copies, as read in NVIDIA's nvidia-container-toolkit source: the spec is edited only when the command line
has the ``create`` subcommand (internal/oci/args.go HasCreateSubcommand, internal/oci/runtime_modifier.go): the
bundle's config.json (``--bundle``/``-b``/``-bundle``, ``=`` forms too) gets device nodes, driver library mounts and
hooks; then the first ``runc`` found on PATH, else in /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
(internal/oci/runtime_low_level.go, pkg/lookup/path.go) is exec'd with the same arguments. Every other command
(``restore``, ``checkpoint``, ``start``, ``delete``) passes through unedited.

Here the edit comes from ``<this file without .py>.json`` beside the script (``mounts``, ``devices``, ``hooks``: OCI
entries appended as they are; a device also gets its cgroup allow rule) so a test can tell the injected parts apart.
"""
import json
import os
import sys

DEFAULT_PATH = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
BUNDLE_FLAGS = ("-b", "--bundle", "-bundle")


def has_create(args):
    prev_bundle = False
    for a in args:
        if not prev_bundle and a in BUNDLE_FLAGS:
            prev_bundle = True
            continue
        if not prev_bundle and a == "create":
            return True
        prev_bundle = False
    return False


def bundle_dir(args):
    out = ""
    i = 0
    while i < len(args):
        name, eq, val = args[i].partition("=")
        if name in BUNDLE_FLAGS:
            if eq:
                out = val
            elif i + 1 < len(args):
                out = args[i + 1]
                i += 1
        i += 1
    return out or "."


def edit(bundle, extra):
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    spec.setdefault("mounts", []).extend(extra.get("mounts", []))
    linux = spec.setdefault("linux", {})
    for d in extra.get("devices", []):
        linux.setdefault("devices", []).append(d)
        linux.setdefault("resources", {}).setdefault("devices", []).append(
            {"allow": True, "type": d["type"], "major": d["major"], "minor": d["minor"], "access": "rwm"})
    for kind, hooks in extra.get("hooks", {}).items():  # e.g. NVIDIA's legacy mode: its prestart hook
        spec.setdefault("hooks", {}).setdefault(kind, []).extend(hooks)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(spec, f)
    os.rename(path + ".tmp", path)


def runc():
    for d in os.environ.get("PATH", "").split(":") + DEFAULT_PATH:
        f = os.path.join(d, "runc")
        if d and os.path.isfile(f) and os.access(f, os.X_OK):
            return f
    sys.exit("chain-runtime: no runc on PATH")


def main():
    args = sys.argv[1:]
    if has_create(args):
        with open(os.path.splitext(os.path.realpath(__file__))[0] + ".json", encoding="utf-8") as f:
            edit(bundle_dir(args), json.load(f))
    r = runc()
    os.execv(r, [r, *args])


main()
