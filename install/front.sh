#!/usr/bin/env bash
# Put gpucr's CRIU front where runc runs `criu`, or take it away again.
#
# The route (why: packaging/criu-front.md): containerd ignores the runc option CriuPath and runc looks `criu` up on
# the PATH it inherits, so gpucr gives one runtime handler a runc wrapper as its BinaryName. The wrapper puts
# DIR/path first on PATH and execs what the handler ran before: its previous BinaryName (nvidia-container-runtime,
# a custom runc) or, with none, the runc found at install, recorded as an absolute path. DIR/path/criu is the front,
# a link to PREFIX/hooks/criu_front.py in a root-owned copy of gpucr's code (never the checkout), and
# DIR/path/front.conf tells it where the real criu is. Only that handler (a Kubernetes RuntimeClass) is affected;
# the daemon and other runtimes keep the real criu; uninstall puts the config back byte for byte. The wrapper also
# turns the `create` of a container gpucr's plugin ticketed for gpucr.io/restore-from into `runc restore`
# (docs/design.md); when the handler's runtime is not runc itself (nvidia-container-runtime edits the spec only on
# create), it hands the target the create with DIR/chain first on PATH, whose `runc` restores into the edited spec.
#
# Usage:
#   install/front.sh install --config FILE [--runtime NAME] [--dir DIR] [--prefix PREFIX] [route options]
#        copy gpucr's code to PREFIX, make DIR, set BinaryName of runtime NAME (default runc) in containerd's FILE
#        to DIR/bin/runc (keeping a copy of FILE in DIR); restart containerd afterwards. Idempotent.
#   install/front.sh uninstall --config FILE [--runtime NAME] [--dir DIR]
#        restore FILE exactly as it was before install (refused if FILE was edited since), remove DIR, and PREFIX
#        once nothing else runs from it; restart containerd afterwards
#   install/front.sh status --config FILE [--runtime NAME] [--json]
#        the chain: handler -> gpucr wrapper -> the runtime it execs; criu -> front -> real criu
#   install/front.sh route --dir DIR [--prefix PREFIX] [route options]
#        make DIR only (bin/runc wrapper, path/criu, path/front.conf; PREFIX defaults to DIR/lib here); for
#        `ctr run --runc-binary DIR/bin/runc`, or a PATH entry (the test instances use GPUCR_CRIU_DIR=DIR/path)
# route options: [--real-criu PATH] [--log-dir DIR] [--hooks MODULE:CALLABLE|none] [--node-config FILE]
#        [--runc PATH] (route: the runc the wrapper execs; install: only for a handler without BinaryName)
# Defaults: DIR=/usr/local/lib/gpucr/front, PREFIX=/usr/lib/gpucr, real criu /usr/sbin/criu, log dir
# /var/log/gpucr, hooks nri_plugin.handlers.front_cuda:make (gpucr's CUDA steps; `--hooks none` makes a pure
# relay), node config /etc/gpucr/config.toml (the hooks read state_dir, unmanaged_cuda, libcuda, lock_timeout_ms).
# Everything it writes is root:root, directories 0755, files 0644 (the wrapper 0755, the config copy 0600).
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() { printf 'gpucr front: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr front: %s\n' "$*" >&2; }
# shellcheck source=install/code.sh
. "$here/code.sh"
# shellcheck source=install/launcher.sh
. "$here/launcher.sh"

DIR=/usr/local/lib/gpucr/front
PREFIX=
REAL_CRIU=/usr/sbin/criu
LOG_DIR=/var/log/gpucr
HOOKS=nri_plugin.handlers.front_cuda:make
NODE_CONFIG=
RUNC=
CONFIG=
RUNTIME=runc
JSON=
PYTHON=${GPUCR_FRONT_PYTHON:-/usr/bin/python3}

parse() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) DIR=$2; shift 2 ;;
            --prefix) PREFIX=$2; shift 2 ;;
            --real-criu) REAL_CRIU=$2; shift 2 ;;
            --log-dir) LOG_DIR=$2; shift 2 ;;
            --hooks) HOOKS=$2; shift 2 ;;
            --node-config) NODE_CONFIG=$2; shift 2 ;;
            --runc) RUNC=$2; shift 2 ;;
            --config) CONFIG=$2; shift 2 ;;
            --runtime) RUNTIME=$2; shift 2 ;;
            --json) JSON=--json; shift ;;
            *) die "unknown option '$1' (see the usage at the top of $0)" ;;
        esac
    done
    case "$DIR" in /*) ;; *) die "--dir $DIR must be an absolute path" ;; esac
    DIR=$(readlink -m -- "$DIR")
}

edit() { "$PYTHON" -S -E "$here/runtime_config.py" "$@"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "$1 must run as root (the front and the wrapper run as root)"; }

check_real_criu() {
    [ -x "$REAL_CRIU" ] || die "the real criu $REAL_CRIU is missing or not executable: install CRIU >= 4.1 or pass --real-criu PATH"
    local v; v=$("$REAL_CRIU" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
    [ -n "$v" ] || die "$REAL_CRIU --version printed no version: is it criu?"
    local major=${v%%.*} rest=${v#*.}; local minor=${rest%%.*}
    if [ "$major" -lt 4 ] || { [ "$major" -eq 4 ] && [ "${minor:-0}" -lt 1 ]; }; then
        die "the real criu $REAL_CRIU is version $v; gpucr needs CRIU >= 4.1 (older CRIU fails on kernels >= 6.13)"
    fi
    local k; k=$(uname -r); local kmajor=${k%%.*} krest=${k#*.}; local kminor=${krest%%[!0-9]*}
    if [ "$major" -eq 4 ] && [ "${minor:-0}" -lt 2 ] && { [ "$kmajor" -gt 6 ] || { [ "$kmajor" -eq 6 ] && [ "${kminor:-0}" -ge 16 ]; }; }; then
        say "warning: the real criu $REAL_CRIU is version $v, which cannot checkpoint containers with TCP/UDP sockets on kernels >= 6.16 (this is $k): install CRIU >= 4.2"
    fi
}

# make_route TARGET: DIR/bin/runc execs TARGET with DIR/path first on PATH; DIR/path/criu runs PREFIX's front.
make_route() {
    local target=$1
    [ -x "$PYTHON" ] || die "$PYTHON is missing: the front needs Python >= 3.11 there (or set GPUCR_FRONT_PYTHON)"
    check_real_criu
    case "$DIR/" in "$repo"/*) die "--dir $DIR is inside the checkout $repo: choose a root-owned place" ;; esac
    check_root_path "$DIR" "--dir"
    install_code "$PREFIX" "$DIR/path/criu"
    mkdir_root "$DIR" "$DIR/bin" "$DIR/path" "$DIR/chain"
    # the front runs as DIR/path/criu and reads DIR/path/front.conf beside it. A link to the copy's
    # hooks/criu_front.py (its shebang is /usr/bin/python3 -SE) costs no extra exec; another Python gets a launcher.
    rm -f "$DIR/path/criu"
    if [ "$PYTHON" = /usr/bin/python3 ]; then
        ln -s "$PREFIX/hooks/criu_front.py" "$DIR/path/criu"
    else
        printf '#!/bin/sh\n# gpucr CRIU front (install/front.sh)\nGPUCR_FRONT_CONF=%s exec %s -S -E %s "$@"\n' \
            "$DIR/path/front.conf" "$PYTHON" "$PREFIX/hooks/criu_front.py" | write_root "$DIR/path/criu" 0755
    fi
    {
        echo "# gpucr CRIU front configuration (install/front.sh); environment GPUCR_REAL_CRIU etc. override it"
        echo "real_criu = $REAL_CRIU"
        echo "log_dir = $LOG_DIR"
        [ -z "$HOOKS" ] || [ "$HOOKS" = none ] || echo "hooks = $HOOKS"
        [ -z "$NODE_CONFIG" ] || echo "node_config = $NODE_CONFIG"
    } | write_root "$DIR/path/front.conf" 0644
    write_root "$DIR/bin/runc" 0755 <<SH
#!/bin/sh
# gpucr: runc with gpucr's CRIU front first on PATH (install/front.sh; undo with install/front.sh uninstall)
# next in the runtime chain: $target
PATH=$DIR/path:\${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}
export PATH
# gpucr.io/restore-from (docs/design.md): a create whose bundle names it becomes a runc restore of the checkpoint
# gpucr's plugin checked (nri_plugin/handlers/runc_restore.py); the start that follows finds it running and is done
cmd= prev= root=/run/runc bundle=. id=
for a in "\$@"; do
    if [ -z "\$cmd" ]; then
        case "\$prev" in
            --root) root=\$a ;;
            --log|--log-format|--criu|--rootless) ;;
            *) case "\$a" in --root=*) root=\${a#--root=} ;; -*) ;; *) cmd=\$a ;; esac ;;
        esac
    else
        case "\$prev" in --bundle|-b) bundle=\$a ;; esac
        case "\$a" in --bundle=*) bundle=\${a#--bundle=} ;; esac
    fi
    prev=\$a id=\$a
done
case "\$cmd" in
    create) # ... or that gpucr's plugin ticketed: its ticket without the annotation means containerd dropped the
            # plugin's answer (NRI timeout), and the create must fail rather than start fresh. The state dir is the
            # node config's (front.conf names it), read here because this runs for every container.
            nc=\$(sed -n 's/^ *node_config *= *//p' "$DIR/path/front.conf" 2>/dev/null | tail -n1 | tr -d "\"' ")
            st=\$(sed -n 's/^ *state_dir *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "\${nc:-/etc/gpucr/config.toml}" 2>/dev/null)
            if [ -e "\${st:-/run/gpucr}/restore/\$id.json" ] || grep -qsF '"gpucr.io/restore-from"' "\$bundle/config.json"; then
                exec $PYTHON -S -E $PREFIX/hooks/runc_restore.py --criu $DIR/path/criu -- $target "\$@"
            fi ;;
    start) if [ -e "\$root/\$id/gpucr-restored" ]; then rm -f "\$root/\$id/gpucr-restored"; exit 0; fi ;;
esac
exec $target "\$@"
SH
    # DIR/chain/runc: the runc a chaining target (nvidia-container-runtime) finds first on PATH while the wrapper
    # hands it a restoring create: that create, edited by the target, becomes runc restore with the real runc
    # (nri_plugin/handlers/runc_restore.py inner_main); never on PATH otherwise
    write_root "$DIR/chain/runc" 0755 <<SH
#!/bin/sh
# gpucr: the runc that $target finds during a gpucr.io/restore-from restore (install/front.sh)
exec $PYTHON -S -E $PREFIX/hooks/runc_restore.py --criu $DIR/path/criu --inner -- "\$@"
SH
    say "route ready in $DIR: runtime binary $DIR/bin/runc -> $target, front $DIR/path/criu ($PREFIX) -> real criu $REAL_CRIU"
}

# the code prefix a route's front runs from (a link to PREFIX/hooks/criu_front.py, or a launcher naming it)
route_prefix() {
    local f=$DIR/path/criu code
    if [ -L "$f" ]; then code=$(readlink -- "$f"); else code=$(grep -os '/[^ ]*/hooks/criu_front.py' "$f" | head -n1); fi
    [ -n "$code" ] && dirname -- "$(dirname -- "$code")"
}

daemon_path_note() {
    say "containerd 2.1's CRI CheckpointContainer also runs 'criu' (>= 3.16) from the daemon's own PATH: keep the real criu there"
    say "ctr users: ctr run --runc-binary $DIR/bin/runc ... (saved with the container and its checkpoints)"
}

[ $# -ge 1 ] || die "usage: $0 route|install|uninstall|status [options]"
cmd=$1; shift
parse "$@"
case "$cmd" in
    route)
        need_root route
        PREFIX=${PREFIX:-$DIR/lib}
        target=$(edit target --binary-name "${RUNC:-runc}")
        make_route "$target" ;;
    install)
        need_root install
        [ -n "$CONFIG" ] || die "--config FILE is required"
        PREFIX=${PREFIX:-/usr/lib/gpucr}
        target=$(edit plan "$CONFIG" "$RUNTIME" "$DIR/bin/runc" "$DIR/install.json" ${RUNC:+--runc "$RUNC"})
        make_route "$target"
        edit install "$CONFIG" "$RUNTIME" "$DIR/bin/runc" "$DIR/install.json" "$target"
        say "restart containerd to apply"
        daemon_path_note ;;
    uninstall)
        need_root uninstall
        [ -n "$CONFIG" ] || die "--config FILE is required"
        edit uninstall "$CONFIG" "$RUNTIME" "$DIR/bin/runc" "$DIR/install.json"
        prefix=$(route_prefix || true)
        rm -rf "${DIR:?}/bin" "${DIR:?}/path" "${DIR:?}/chain" "$DIR/install.json" "$DIR/config.before-gpucr"
        [ -z "$prefix" ] || release_code "$prefix" "$DIR/path/criu"
        rmdir "$DIR" 2>/dev/null || true
        say "route $DIR removed; restart containerd to apply" ;;
    status)
        [ -n "$CONFIG" ] || die "--config FILE is required"
        edit status "$CONFIG" "$RUNTIME" $JSON ;;
    *) die "unknown command '$cmd' (route|install|uninstall|status)" ;;
esac
