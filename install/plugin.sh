#!/usr/bin/env bash
# Install gpucr's NRI plugin (the checkpoint policy, `gpucr plugin`) as a pre-registered plugin that containerd starts
# itself, or take it away again.
#
# containerd runs every executable NN-name in its NRI plugin_path (default /opt/nri/plugins) as root when NRI starts,
# with no arguments, stdio on /dev/null and only NRI_PLUGIN_NAME/IDX/SOCKET in its environment, and passes it the
# content of plugin_config_path/NN-name.conf (default /etc/nri/conf.d), if any, as its configuration (for gpucr:
# node config TOML that replaces --config). `gpucr plugin` needs protobuf, so it runs from a root-owned virtual
# environment VENV into which this script installs gpucr's code and dependencies with pip (never from the checkout):
# the launcher DIR/NN-gpucr is `exec VENV/bin/python -I -m nri_plugin.cli.main plugin --log-file LOG [--config FILE]`.
#
# Usage:
#   install/plugin.sh install   [--nri-plugin-dir DIR] [--index NN] [--venv VENV] [--log-file LOG] [--config FILE]
#        make VENV (python3 -m venv; pip install of gpucr and its dependencies: network or PIP_FIND_LINKS/
#        PIP_NO_INDEX), write DIR/NN-gpucr; restart containerd afterwards (it scans DIR when NRI starts). Idempotent.
#   install/plugin.sh uninstall [--nri-plugin-dir DIR] [--index NN] [--venv VENV]
#        remove DIR/NN-gpucr and VENV; restart containerd afterwards (or stop the plugin process)
#   install/plugin.sh status    [--nri-plugin-dir DIR] [--index NN]
# Defaults: DIR=/opt/nri/plugins, NN=10, VENV=/usr/local/lib/gpucr/plugin, LOG=/var/log/gpucr/plugin.log, the node
# config /etc/gpucr/config.toml (read by the plugin; missing: defaults). Needs the generated protobuf modules in the
# checkout (make protos, or tools/genproto.py --no-cri). The OCI hook the plugin injects: install/hook.sh install.
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() { printf 'gpucr plugin: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr plugin: %s\n' "$*" >&2; }
# shellcheck source=install/code.sh
. "$here/code.sh"
# shellcheck source=install/launcher.sh
. "$here/launcher.sh"

DIR=/opt/nri/plugins
INDEX=10
VENV=/usr/local/lib/gpucr/plugin
LOG=/var/log/gpucr/plugin.log
CONFIG=
PYTHON=${GPUCR_PLUGIN_PYTHON:-/usr/bin/python3}
MARK="# gpucr NRI plugin launcher (install/plugin.sh)"
VENV_MARK=.gpucr-plugin-venv

parse() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --nri-plugin-dir) DIR=$2; shift 2 ;;
            --index) INDEX=$2; shift 2 ;;
            --venv) VENV=$2; shift 2 ;;
            --log-file) LOG=$2; shift 2 ;;
            --config) CONFIG=$2; shift 2 ;;
            *) die "unknown option '$1' (see the usage at the top of $0)" ;;
        esac
    done
    case "$INDEX" in [0-9][0-9]) ;; *) die "--index $INDEX must be two digits (containerd orders plugins by it)" ;; esac
    local v
    for v in "$DIR" "$VENV" "$LOG" ${CONFIG:+"$CONFIG"}; do
        case "$v" in /*) ;; *) die "$v must be an absolute path" ;; esac
    done
    DIR=$(readlink -m -- "$DIR"); VENV=$(readlink -m -- "$VENV"); LOG=$(readlink -m -- "$LOG")
    LAUNCHER=$DIR/$INDEX-gpucr
}

ours() { is_ours "$LAUNCHER" "$MARK"; }

install_plugin() {
    [ "$(id -u)" -eq 0 ] || die "install must run as root (containerd runs the plugin as root)"
    [ -x "$PYTHON" ] || die "$PYTHON is missing: the plugin needs Python >= 3.11 there (or set GPUCR_PLUGIN_PYTHON)"
    [ -f "$repo/nri_plugin/nri/api/_pb/api_pb2.py" ] && [ -f "$repo/nri_plugin/ttrpc/_pb/ttrpc_pb2.py" ] \
        || die "$repo has no generated protobuf modules: run 'make protos' (or .venv/bin/python tools/genproto.py --no-cri) first"
    claim "$LAUNCHER" "$MARK" install/plugin.sh --index
    if [ -e "$VENV" ] && [ ! -f "$VENV/$VENV_MARK" ]; then
        die "$VENV exists and was not made by install/plugin.sh: choose another --venv"
    fi
    local p
    for p in "$VENV" "$LAUNCHER" "$LOG"; do
        case "$p/" in "$repo"/*) die "$p is inside the checkout $repo: choose a root-owned place" ;; esac
    done
    check_root_path "$VENV" "--venv"
    check_root_path "$LAUNCHER" "--nri-plugin-dir"
    check_root_path "$LOG" "--log-file"
    [ -z "$CONFIG" ] || check_root_path "$CONFIG" "--config"
    mkdir_root "$(dirname -- "$VENV")" "$DIR" "$(dirname -- "$LOG")"
    # gpucr's code and dependencies into a fresh environment, swapped in whole: a failed pip leaves the old one
    # (global: the EXIT trap reads them)
    stage=$(mktemp -d "$(dirname -- "$VENV")/.gpucr-plugin.XXXXXX")
    src=$(mktemp -d)
    trap 'rm -rf "$stage" "$src"' EXIT
    (cd "$repo" && cp -r --parents pyproject.toml README.md nri_plugin hooks "$src"/)
    find "$src" -name __pycache__ -prune -exec rm -rf {} +
    "$PYTHON" -m venv "$stage" >/dev/null || die "$PYTHON -m venv failed: install the venv module (python3-venv)"
    "$stage/bin/python" -m pip install -q --disable-pip-version-check --no-warn-script-location "$src" \
        || die "pip could not install gpucr and its dependencies (no network? set PIP_FIND_LINKS=DIR and PIP_NO_INDEX=1 for a directory of wheels)"
    # moved into place: the launcher runs VENV/bin/python -m, which finds the environment from its own location
    : > "$stage/$VENV_MARK"
    chown -R root:root "$stage"
    chmod -R go-w "$stage"
    chmod 0755 "$stage"
    if [ -e "$VENV" ]; then mv -T "$VENV" "$stage.old"; fi
    mv -T "$stage" "$VENV"
    rm -rf "$stage.old"
    local conf=
    [ -z "$CONFIG" ] || conf=" --config $CONFIG"
    write_root "$LAUNCHER" 0755 <<SH
#!/bin/sh
$MARK: gpucr's policy plugin from the root-owned environment $VENV
exec $VENV/bin/python -I -m nri_plugin.cli.main plugin --log-file $LOG$conf
SH
    say "$LAUNCHER installed: runs gpucr plugin from $VENV, logs to $LOG; restart containerd to start it"
}

uninstall_plugin() {
    [ "$(id -u)" -eq 0 ] || die "uninstall must run as root"
    if [ -e "$LAUNCHER" ]; then
        ours || die "$LAUNCHER was not written by install/plugin.sh: left as it is"
        rm -f "$LAUNCHER"
        say "$LAUNCHER removed"
    else
        say "$LAUNCHER is not installed"
    fi
    if [ -f "$VENV/$VENV_MARK" ]; then rm -rf "${VENV:?}"; say "$VENV removed"; fi
    say "restart containerd (or stop the running plugin) to apply"
}

describe_plugin() { echo "gpucr NRI plugin, $(sed -n 's/^exec //p' "$LAUNCHER")"; }
status_plugin() { launcher_status "$LAUNCHER" "$MARK" install/plugin.sh describe_plugin; }

dispatch plugin "install|uninstall|status [options]" "$@"
