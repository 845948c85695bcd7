#!/usr/bin/env bash
# Install the OCI hook gpucr's plugin injects into managed containers (createRuntime, poststop), at the node
# config's default hook_path, or take it away again.
#
# The hook runs as root under the runtime, so it runs a root-owned copy of gpucr's code (install/code.sh), never
# the checkout: HOOK is a small root-owned launcher that runs PREFIX/hooks/oci_hook.py with /usr/bin/python3 -SE.
#
# Usage:
#   install/hook.sh install   [--path HOOK] [--prefix PREFIX]   copy gpucr's code to PREFIX, write HOOK (idempotent)
#   install/hook.sh uninstall [--path HOOK]                     remove HOOK, and PREFIX once nothing runs from it
#   install/hook.sh status    [--path HOOK]
# Defaults: HOOK=/usr/libexec/gpucr/gpucr-hook (hook_path in /etc/gpucr/config.toml), PREFIX=/usr/lib/gpucr.
# Check it: echo '{"id": "ID", "pid": PID}' | /usr/libexec/gpucr/gpucr-hook create-runtime --state-dir /run/gpucr
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() { printf 'gpucr hook: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr hook: %s\n' "$*" >&2; }
# shellcheck source=install/code.sh
. "$here/code.sh"
# shellcheck source=install/launcher.sh
. "$here/launcher.sh"

HOOK=/usr/libexec/gpucr/gpucr-hook
PREFIX=/usr/lib/gpucr
PYTHON=${GPUCR_HOOK_PYTHON:-/usr/bin/python3}
MARK="# gpucr OCI hook launcher (install/hook.sh)"

parse() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --path) HOOK=$2; shift 2 ;;
            --prefix) PREFIX=$2; shift 2 ;;
            *) die "unknown option '$1' (see the usage at the top of $0)" ;;
        esac
    done
    case "$HOOK" in /*) ;; *) die "--path $HOOK must be an absolute path (the plugin's hook_path)" ;; esac
    case "$PREFIX" in /*) ;; *) die "--prefix $PREFIX must be an absolute path" ;; esac
    HOOK=$(readlink -m -- "$HOOK"); PREFIX=$(readlink -m -- "$PREFIX")
}

ours() { is_ours "$HOOK" "$MARK"; }
# the prefix a launcher runs (its sys.path line)
hook_prefix() { sed -n 's/^sys.path.insert(0, "\(.*\)")$/\1/p' "$HOOK" | head -n1; }

install_hook() {
    [ "$(id -u)" -eq 0 ] || die "install must run as root (the hook runs as root)"
    [ -x "$PYTHON" ] || die "$PYTHON is missing: the hook needs Python >= 3.11 there (or set GPUCR_HOOK_PYTHON)"
    claim "$HOOK" "$MARK" install/hook.sh --path
    case "$HOOK/" in "$repo"/*) die "--path $HOOK is inside the checkout $repo: choose a root-owned place" ;; esac
    check_root_path "$HOOK" "--path"
    local old=; ours && old=$(hook_prefix)
    install_code "$PREFIX" "$HOOK"
    mkdir_root "$(dirname -- "$HOOK")"
    write_root "$HOOK" 0755 <<PY
#!$PYTHON -SE
$MARK: runs $PREFIX/hooks/oci_hook.py, a root-owned copy of gpucr's code
import sys
sys.path.insert(0, "$PREFIX")
from hooks.oci_hook import main  # noqa: E402
sys.exit(main())
PY
    # moved to another prefix: the old one goes once nothing else runs from it
    [ -z "$old" ] || [ "$old" = "$PREFIX" ] || release_code "$old" "$HOOK"
    say "$HOOK installed: runs $PREFIX/hooks/oci_hook.py with $PYTHON -SE"
}

uninstall_hook() {
    [ "$(id -u)" -eq 0 ] || die "uninstall must run as root"
    [ -e "$HOOK" ] || { say "$HOOK is not installed (nothing to do)"; return 0; }
    ours || die "$HOOK was not written by install/hook.sh: left as it is"
    local prefix; prefix=$(hook_prefix)
    rm -f "$HOOK"
    rmdir "$(dirname -- "$HOOK")" 2>/dev/null || true
    [ -z "$prefix" ] || release_code "$prefix" "$HOOK"
    say "$HOOK removed"
}

describe_hook() { echo "gpucr OCI hook, runs $(hook_prefix)/hooks/oci_hook.py"; }
status_hook() { launcher_status "$HOOK" "$MARK" install/hook.sh describe_hook; }

dispatch hook "install|uninstall|status [--path HOOK] [--prefix PREFIX]" "$@"
