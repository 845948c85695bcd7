#!/usr/bin/env bash
# Put gpucr's CRIU front where runc runs `criu`, or take it away again.
#
# The route (why: packaging/criu-front.md): containerd ignores the runc option CriuPath and runc looks `criu` up on
# the PATH it inherits, so gpucr gives one runtime handler a runc wrapper as its BinaryName. The wrapper puts
# DIR/path first on PATH and execs the real runc; DIR/path/criu is the front (hooks/criu_front.py), and
# DIR/path/front.conf tells it where the real criu is. Only that handler (a Kubernetes RuntimeClass) is affected, the
# daemon and other runtimes keep the real criu, and uninstall restores the config line it changed.
#
# Usage:
#   install/front.sh route --dir DIR [--real-criu PATH] [--log-dir DIR] [--hooks MODULE:CALLABLE|none]
#        [--node-config FILE] [--runc PATH]
#        make DIR (bin/runc wrapper, path/criu, path/front.conf) only; for `ctr run --runc-binary DIR/bin/runc`,
#        or a PATH entry (the test instances use GPUCR_CRIU_DIR=DIR/path)
#   install/front.sh install --config FILE [--runtime NAME] [--dir DIR] [route options]
#        make DIR and set BinaryName of runtime NAME (default runc) in containerd's FILE to DIR/bin/runc;
#        restart containerd afterwards
#   install/front.sh uninstall --config FILE [--runtime NAME] [--dir DIR]
#        restore the BinaryName line install changed, remove DIR; restart containerd afterwards
#   install/front.sh status --config FILE [--runtime NAME]
# Defaults: DIR=/usr/local/lib/gpucr/front, real criu /usr/sbin/criu, log dir /var/log/gpucr, hooks
# nri_plugin.gpufront:make (gpucr's CUDA steps; `--hooks none` makes a pure relay), node config
# /etc/gpucr/config.toml (the hooks read state_dir, unmanaged_cuda, libcuda, lock_timeout_ms there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

die() { printf 'gpucr front: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr front: %s\n' "$*" >&2; }

DIR=/usr/local/lib/gpucr/front
REAL_CRIU=/usr/sbin/criu
LOG_DIR=/var/log/gpucr
HOOKS=nri_plugin.gpufront:make
NODE_CONFIG=
RUNC=
CONFIG=
RUNTIME=runc
PYTHON=${GPUCR_FRONT_PYTHON:-/usr/bin/python3}
FRONT=$repo/hooks/criu_front.py

parse() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) DIR=$2; shift 2 ;;
            --real-criu) REAL_CRIU=$2; shift 2 ;;
            --log-dir) LOG_DIR=$2; shift 2 ;;
            --hooks) HOOKS=$2; shift 2 ;;
            --node-config) NODE_CONFIG=$2; shift 2 ;;
            --runc) RUNC=$2; shift 2 ;;
            --config) CONFIG=$2; shift 2 ;;
            --runtime) RUNTIME=$2; shift 2 ;;
            *) die "unknown option '$1' (see the usage at the top of $0)" ;;
        esac
    done
}

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

make_route() {
    [ -x "$PYTHON" ] || die "$PYTHON is missing: the front needs Python >= 3.11 there (or set GPUCR_FRONT_PYTHON)"
    [ -f "$FRONT" ] || die "$FRONT is missing: run from a gpucr checkout or installed package"
    check_real_criu
    RUNC=${RUNC:-$(command -v runc || true)}
    [ -n "$RUNC" ] && [ -x "$RUNC" ] || die "runc not found: pass --runc PATH"
    case "$RUNC" in "$DIR"/*) die "--runc $RUNC is inside $DIR: give the real runc" ;; esac
    mkdir -p "$DIR/bin" "$DIR/path"
    chmod 0755 "$DIR" "$DIR/bin" "$DIR/path"
    # the front runs as DIR/path/criu and reads DIR/path/front.conf beside it. A symlink to hooks/criu_front.py
    # (its shebang is /usr/bin/python3 -SE) costs no extra exec; another interpreter gets a one-line launcher.
    rm -f "$DIR/path/criu"
    if [ "$PYTHON" = /usr/bin/python3 ]; then
        ln -s "$FRONT" "$DIR/path/criu"
    else
        printf '#!/bin/sh\n# gpucr CRIU front (install/front.sh)\nGPUCR_FRONT_CONF=%s exec %s -S -E %s "$@"\n' \
            "$DIR/path/front.conf" "$PYTHON" "$FRONT" > "$DIR/path/criu"
        chmod 0755 "$DIR/path/criu"
    fi
    {
        echo "# gpucr CRIU front configuration (install/front.sh); environment GPUCR_REAL_CRIU etc. override it"
        echo "real_criu = $REAL_CRIU"
        echo "log_dir = $LOG_DIR"
        [ -z "$HOOKS" ] || [ "$HOOKS" = none ] || echo "hooks = $HOOKS"
        [ -z "$NODE_CONFIG" ] || echo "node_config = $NODE_CONFIG"
    } > "$DIR/path/front.conf"
    cat > "$DIR/bin/runc.tmp" <<SH
#!/bin/sh
# gpucr: runc with gpucr's CRIU front first on PATH (install/front.sh; undo with install/front.sh uninstall)
PATH=$DIR/path:\${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}
export PATH
exec $RUNC "\$@"
SH
    chmod 0755 "$DIR/bin/runc.tmp"; mv -f "$DIR/bin/runc.tmp" "$DIR/bin/runc"
    say "route ready in $DIR: runtime binary $DIR/bin/runc -> $RUNC, front $DIR/path/criu -> real criu $REAL_CRIU"
}

# Edit (or restore) BinaryName in the options table of runtime $RUNTIME; the state file remembers the old line.
edit_config() {
    local action=$1
    [ -n "$CONFIG" ] || die "--config FILE is required"
    [ -f "$CONFIG" ] || die "containerd config $CONFIG does not exist"
    "$PYTHON" - "$action" "$CONFIG" "$RUNTIME" "$DIR/bin/runc" "$DIR/install.state" <<'PY'
import json, os, re, sys, tomllib
action, path, runtime, wrapper, state_path = sys.argv[1:]
text = open(path, encoding="utf-8").read()
lines = text.splitlines(keepends=True)
def err(msg):
    print(f"gpucr front: error: {msg}", file=sys.stderr); sys.exit(1)
def options_table():
    want = f"runtimes.{runtime}.options"
    start = None
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("[") and not s.startswith("[["):
            if start is not None:
                return start, i
            name = s.strip("[]").replace('"', "").replace("'", "")
            if name.endswith(want) and ("cri" in name):
                start = i
    return (start, len(lines)) if start is not None else (None, None)
def binary_line(a, b):
    for i in range(a + 1, b):
        if re.match(r"\s*BinaryName\s*=", lines[i]):
            return i
    return None
def binary_value(doc):
    found = []
    def walk(d, trail):
        if isinstance(d, dict):
            for k, v in d.items():
                if k == "options" and trail[-2:] == ["runtimes", runtime] and isinstance(v, dict):
                    found.append(v.get("BinaryName"))
                walk(v, trail + [k])
    walk(doc, [])
    return found
a, b = options_table()
if action == "status":
    print(json.dumps({"config": path, "runtime": runtime, "BinaryName": binary_value(tomllib.loads(text))}))
    sys.exit(0)
if a is None:
    err(f"{path} has no [...runtimes.{runtime}.options] table of the CRI plugin; add one (containerd config default "
        "shows it) or pick another --runtime")
i = binary_line(a, b)
if action == "install":
    if os.path.exists(state_path):
        st = json.load(open(state_path))
        if st["config"] != os.path.abspath(path) or st["runtime"] != runtime:
            err(f"{state_path} says the route is installed for {st['config']} runtime {st['runtime']}; uninstall it first")
    else:
        st = {"config": os.path.abspath(path), "runtime": runtime, "old_line": lines[i] if i is not None else None}
    indent = re.match(r"\s*", lines[a + 1] if a + 1 < b and lines[a + 1].strip() else lines[a]).group(0)
    if lines[a].startswith(indent) and a + 1 >= b:
        indent = re.match(r"\s*", lines[a]).group(0) + "  "
    new = f'{indent}BinaryName = "{wrapper}"\n'
    if i is not None:
        lines[i] = new
    else:
        lines.insert(a + 1, new)
    out = "".join(lines)
    got = binary_value(tomllib.loads(out))
    if got != [wrapper]:
        err(f"editing {path} did not give BinaryName = {wrapper} for runtime {runtime} (found {got}); file unchanged")
    with open(state_path, "w") as f:
        json.dump(st, f)
elif action == "uninstall":
    if not os.path.exists(state_path):
        err(f"{state_path} is missing: the route was not installed by install/front.sh (nothing to undo)")
    st = json.load(open(state_path))
    if i is None or wrapper not in lines[i]:
        print(f"gpucr front: {path} runtime {runtime} no longer uses {wrapper}; leaving the config as it is",
              file=sys.stderr)
        os.unlink(state_path); sys.exit(0)
    if st["old_line"] is None:
        del lines[i]
    else:
        lines[i] = st["old_line"]
    out = "".join(lines)
    tomllib.loads(out)
    os.unlink(state_path)
tmp = path + ".gpucr-tmp"
with open(tmp, "w", encoding="utf-8") as f:
    f.write(out)
os.chmod(tmp, os.stat(path).st_mode & 0o7777)
os.replace(tmp, path)
PY
}

daemon_path_note() {
    say "containerd 2.1's CRI CheckpointContainer also runs 'criu' (>= 3.16) from the daemon's own PATH: keep the real criu there"
    say "ctr users: ctr run --runc-binary $DIR/bin/runc ... (saved with the container and its checkpoints)"
}

[ $# -ge 1 ] || die "usage: $0 route|install|uninstall|status [options]"
cmd=$1; shift
parse "$@"
case "$cmd" in
    route) make_route ;;
    install)
        [ "$(id -u)" -eq 0 ] || die "install must run as root"
        make_route
        edit_config install
        say "$CONFIG: runtime '$RUNTIME' now runs $DIR/bin/runc; restart containerd to apply"
        daemon_path_note ;;
    uninstall)
        edit_config uninstall
        rm -rf "${DIR:?}/bin" "${DIR:?}/path"; rmdir "$DIR" 2>/dev/null || true
        say "$CONFIG: runtime '$RUNTIME' restored; restart containerd to apply" ;;
    status) edit_config status ;;
    *) die "unknown command '$cmd' (route|install|uninstall|status)" ;;
esac
