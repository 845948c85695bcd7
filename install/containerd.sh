#!/usr/bin/env bash
# Start, stop or inspect a private containerd instance (never the system's): its own root, state, gRPC and
# NRI sockets, NRI plugin dirs, runc root, TMPDIR and cgroup parent; CRI with cgroupfs, the local pause image
# as sandbox image, host-network pods (no CNI). Everything lives in $GPUCR_TEST_ROOT/ctrd-<version>[-<name>].
#
# Usage: install/containerd.sh start VERSION    (1.7 | 2.1 | 1.7.24 | 2.1.9); prints the instance's info.json path
#        install/containerd.sh stop VERSION     kills containers, shims and containerd; unmounts; removes cgroups and dirs
#        install/containerd.sh status VERSION
# Environment: GPUCR_INSTANCE=name  runs a second instance of the same version beside the first.
#              GPUCR_CRIU_DIR=dir   a directory put first on containerd's PATH (where runc finds `criu`).
#              GPUCR_RUNC_DIR=dir   a directory whose `runc` is the runtime binary (CRI BinaryName, and `runc` on
#                                   containerd's PATH for ctr containers); the test rig's cgroup-v2 leg sets it. A
#                                   gpucr runc wrapper there also gets install/front.sh's container_annotations.
#              GPUCR_NRI_REQUEST_TIMEOUT=2s  NRI plugin_request_timeout (containerd's default 2s; bench/gpu_restore.py
#                                   raises it: staging a multi-GiB checkpoint.tar at CreateContainer takes longer).
#              GPUCR_CONTAINERD_LOG_LEVEL (default debug).
#              GPUCR_CONTAINERD_EXTRA_CONFIG=file  TOML appended to the generated config (same schema version).
#              GPUCR_CONTAINERD_NRI_DISABLE=true   start with NRI disabled (gpucr doctor's tests).
#              GPUCR_CONTAINERD_NRI=default  leave NRI at containerd's default (1.7: disabled, 2.x: enabled), as a stock
#                                   config does (its socket and plugin dirs stay private); for `gpucr setup --apply`.
#              GPUCR_CONTAINERD_UNSHARE=1  start containerd in new network and mount namespaces (a second "node" on
#                                   one host: its host-network pods get its own netns, with lo up; its containers'
#                                   mounts stay inside; it sees the host's mounts as they were at start). Everything
#                                   in them dies with the instance's processes at stop. Not with restart.
#        install/containerd.sh restart VERSION  the daemon only (containers and shims keep running), same config
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=install/lib.sh
. "$here/lib.sh"

instance_vars() {
    VER=$(containerd_version "$1")
    NAME=ctrd-$VER${GPUCR_INSTANCE:+-$GPUCR_INSTANCE}
    DIR=$GPUCR_TEST_ROOT/$NAME
    PREFIX=$(containerd_prefix "$VER")
    SOCK=$DIR/containerd.sock
    NRI_SOCK=$DIR/nri/nri.sock
    CGROUP_PARENT=gpucr-test-$VER${GPUCR_INSTANCE:+-$GPUCR_INSTANCE}
    RUNC=${GPUCR_RUNC_DIR:+$GPUCR_RUNC_DIR/runc}
    RUNC=${RUNC:-$(command -v runc || true)}
    # containerd -> shim -> runc -> criu all resolve through this PATH
    CTRD_PATH=${GPUCR_CRIU_DIR:+$GPUCR_CRIU_DIR:}${GPUCR_RUNC_DIR:+$GPUCR_RUNC_DIR:}$BIN:$PREFIX/usr/bin
    DAEMON_PATH=$CTRD_PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    CTR=$PREFIX/usr/bin/ctr
    PIDFILE=$DIR/containerd.pid
    LOG=$DIR/containerd.log
}

nri_enable_lines() {
    [ "${GPUCR_CONTAINERD_NRI:-}" = default ] \
        || printf '    disable = %s\n    disable_connections = false\n' "${GPUCR_CONTAINERD_NRI_DISABLE:-false}"
}

# the start of the config, alike in both schema versions ($1: 2 for containerd 1.7, 3 for 2.x) but for how plugin IDs
# are quoted: the version line, the instance's dirs and sockets, its log level, NRI and the opt plugin
config_head() {
    local q=\" lvl=${GPUCR_CONTAINERD_LOG_LEVEL:-debug}
    [ "$1" = 2 ] || q=\'
    cat <<TOML
version = $1
root = "$DIR/root"
state = "$DIR/state"
temp = "$DIR/tmp"
[grpc]
  address = "$SOCK"
[debug]
  level = "$lvl"
[plugins]
  [plugins.${q}io.containerd.nri.v1.nri${q}]
$(nri_enable_lines)
    socket_path = "$NRI_SOCK"
    plugin_path = "$DIR/nri/plugins"
    plugin_config_path = "$DIR/nri/conf.d"
    plugin_registration_timeout = "5s"
    plugin_request_timeout = "${GPUCR_NRI_REQUEST_TIMEOUT:-2s}"
  [plugins.${q}io.containerd.internal.v1.opt${q}]
    path = "$DIR/opt"
TOML
}

write_config() {
    local major=${VER%%.*}
    if [ "$major" = 1 ]; then
        { config_head 2; cat <<TOML
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/gpucr-pause:test"
    restrict_oom_score_adj = true
    enable_cdi = true
    cdi_spec_dirs = ["$DIR/cdi"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$RUNC"
          Root = "$DIR/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$DIR/cni/bin"
      conf_dir = "$DIR/cni/net.d"
TOML
        } > "$DIR/config.toml"
    else
        { config_head 3; cat <<TOML
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "localhost/gpucr-pause:test"
  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    enable_cdi = true
    cdi_spec_dirs = ["$DIR/cdi"]
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$RUNC"
          Root = "$DIR/runc"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["$DIR/cni/bin"]
      conf_dir = "$DIR/cni/net.d"
TOML
        } > "$DIR/config.toml"
    fi
    # a gpucr runc wrapper as the runtime binary: its handler also gets what install/front.sh install adds to a
    # routed handler (container_annotations passing gpucr.io/*), by the same function, so tests run what users get
    if [ -n "$RUNC" ] && grep -qsF "# gpucr: runc with gpucr's CRIU front first on PATH" "$RUNC"; then
        /usr/bin/python3 -S -E -c 'import sys; sys.path.insert(0, sys.argv[1]); import runtime_config as rc
p = sys.argv[2]; t = open(p).read(); open(p, "w").write(rc.with_annotations(t, p, "runc"))' \
            "$here" "$DIR/config.toml"
    fi
    if [ -n "${GPUCR_CONTAINERD_EXTRA_CONFIG:-}" ]; then
        [ -r "$GPUCR_CONTAINERD_EXTRA_CONFIG" ] || die "GPUCR_CONTAINERD_EXTRA_CONFIG=$GPUCR_CONTAINERD_EXTRA_CONFIG is not readable"
        cat "$GPUCR_CONTAINERD_EXTRA_CONFIG" >> "$DIR/config.toml"
    fi
}

write_info() {
    cat > "$DIR/info.json" <<JSON
{"version": "$VER", "name": "$NAME", "dir": "$DIR", "address": "$SOCK", "nri_socket": "$NRI_SOCK",
 "nri_plugin_dir": "$DIR/nri/plugins", "nri_conf_dir": "$DIR/nri/conf.d", "ctr": "$CTR",
 "runc_root": "$DIR/runc", "state_dir": "$DIR/state", "root_dir": "$DIR/root", "log": "$LOG",
 "cgroup_parent": "/$CGROUP_PARENT", "bin_dir": "$BIN", "pid": $(cat "$PIDFILE"),
 "busybox_image": "localhost/gpucr-busybox:test", "pause_image": "localhost/gpucr-pause:test",
 "daemon_path": "$DAEMON_PATH", "netns": "$([ -e "$DIR/unshared" ] && echo "/proc/$(cat "$PIDFILE")/ns/net")"}
JSON
    # a shell-friendly copy for people: . info.env; ctr t ls
    cat > "$DIR/info.env" <<ENV
export CONTAINERD_ADDRESS=$SOCK CONTAINERD_NAMESPACE=k8s.io PATH=$CTRD_PATH:\$PATH
ENV
}

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
    need_root start
    instance_vars "$1"
    [ -x "$PREFIX/usr/bin/containerd" ] || die "containerd $VER is not installed: run install/deps.sh first"
    [ -x "$BIN/criu" ] || die "criu is not installed: run install/deps.sh first"
    if running; then
        say "containerd $VER already running (pid $(cat "$PIDFILE"), $SOCK)"
        write_info; echo "$DIR/info.json"; return 0
    fi
    stop_instance quiet
    mkdir -p "$DIR"/{root,state,tmp,opt,nri/plugins,nri/conf.d,runc,cni/bin,cni/net.d,cdi}
    chmod 0700 "$DIR"
    write_config
    [ -e /run/containerd ] || { mkdir -p /run/containerd; touch "$GPUCR_TEST_ROOT/.created-run-containerd"; }
    [ -n "$RUNC" ] && [ -x "$RUNC" ] || die "runc not found${GPUCR_RUNC_DIR:+ in GPUCR_RUNC_DIR=$GPUCR_RUNC_DIR}: run install/deps.sh first"
    # TMPDIR catches ctr restore's leaks. unshare and sh exec in turn: the pid is containerd's.
    local ns=()
    if [ "${GPUCR_CONTAINERD_UNSHARE:-}" = 1 ]; then
        ns=(unshare --net --mount --propagation slave -- sh -c 'ip link set lo up && exec "$@"' containerd)
        touch "$DIR/unshared"
    fi
    env -i PATH="$DAEMON_PATH" TMPDIR="$DIR/tmp" HOME=/root setsid "${ns[@]}" "$PREFIX/usr/bin/containerd" \
        --config "$DIR/config.toml" >"$LOG" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
    local i
    for i in $(seq 100); do
        if ! running; then
            say "containerd $VER exited during start-up; last lines of $LOG:"; tail -n 25 "$LOG" >&2
            stop_instance quiet; exit 1
        fi
        [ -S "$SOCK" ] && "$CTR" --address "$SOCK" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    if ! "$CTR" --address "$SOCK" version >/dev/null 2>&1; then
        say "containerd $VER did not answer on $SOCK within 10 s; last lines of $LOG:"; tail -n 25 "$LOG" >&2
        stop_instance quiet; exit 1
    fi
    "$here/images.sh" import "$CTR" "$SOCK" || { tail -n 25 "$LOG" >&2; stop_instance quiet; exit 1; }
    write_info
    say "containerd $VER running (pid $(cat "$PIDFILE")), socket $SOCK, NRI socket $NRI_SOCK"
    echo "$DIR/info.json"
}

# Kill every process whose command line names this instance (shims carry -address SOCK, plugins its dir).
kill_instance_procs() {
    local p
    for p in $(pgrep -f -- "$DIR/" || true); do
        [ "$p" = $$ ] || kill -KILL "$p" 2>/dev/null || true
    done
}

stop_instance() {
    local quiet=${1:-}
    if [ -S "$SOCK" ] && running; then
        local ns t
        for ns in $("$CTR" --address "$SOCK" ns ls -q 2>/dev/null); do
            for t in $("$CTR" --address "$SOCK" -n "$ns" t ls -q 2>/dev/null); do
                "$CTR" --address "$SOCK" -n "$ns" t kill -a -s KILL "$t" >/dev/null 2>&1 || true
            done
        done
    fi
    if [ -f "$PIDFILE" ]; then
        local p; p=$(cat "$PIDFILE")
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    fi
    # containers (runc init and the workloads) live in the instance's cgroup parent: kill them there
    local cg
    for cg in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/unified/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
        [ -d "$cg" ] || continue
        [ -f "$cg/freezer.state" ] && find "$cg" -name freezer.state -exec sh -c 'echo THAWED > "$1"' _ {} \; 2>/dev/null || true
        [ -f "$cg/cgroup.freeze" ] && find "$cg" -name cgroup.freeze -exec sh -c 'echo 0 > "$1"' _ {} \; 2>/dev/null || true
        find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    done
    kill_instance_procs
    sleep 0.2
    if [ -d "$DIR" ]; then
        { findmnt -rn -o TARGET | grep -F "$DIR/" || true; } | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done
    fi
    # a killed task leaves its cgroup a moment later (v2 shows it as populated until then), later still on a loaded
    # machine, and a task started meanwhile (a runc or CRIU the dying shim had begun) is killed too: retry for 30 s
    for cg in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/unified/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
        for _ in $(seq 300); do
            [ -d "$cg" ] || break
            find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
            [ -d "$cg" ] || break
            find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
            sleep 0.1
        done
    done
    rm -rf "$DIR"
    rm -f /run/criu.kdat.tmp
    # /run/containerd only if these scripts created it and no other gpucr instance still runs
    if [ -f "$GPUCR_TEST_ROOT/.created-run-containerd" ] && ! ls "$GPUCR_TEST_ROOT"/ctrd-*/containerd.pid >/dev/null 2>&1; then
        rm -rf /run/containerd; rm -f "$GPUCR_TEST_ROOT/.created-run-containerd"
    fi
    [ -n "$quiet" ] || say "containerd $VER stopped and cleaned up ($DIR removed)"
}

stop() { need_root stop; instance_vars "$1"; stop_instance; }

# the daemon again with the config as it is now (what `systemctl restart containerd` does to a node's)
restart() {
    need_root restart
    instance_vars "$1"
    running || die "containerd $VER is not running (start it first)"
    [ ! -e "$DIR/unshared" ] || die "containerd $VER runs in its own namespaces (GPUCR_CONTAINERD_UNSHARE=1): stop and start it"
    local p; p=$(cat "$PIDFILE")
    kill -TERM "$p"
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$p" 2>/dev/null || die "containerd $VER (pid $p) did not stop within 10 s"
    env -i PATH="$DAEMON_PATH" TMPDIR="$DIR/tmp" HOME=/root setsid "$PREFIX/usr/bin/containerd" --config "$DIR/config.toml" \
        >>"$LOG" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
    for _ in $(seq 100); do
        running || { say "containerd $VER exited during restart; last lines of $LOG:"; tail -n 25 "$LOG" >&2; exit 1; }
        "$CTR" --address "$SOCK" version >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$CTR" --address "$SOCK" version >/dev/null 2>&1 || die "containerd $VER did not answer on $SOCK within 10 s after restart"
    write_info
    say "containerd $VER restarted (pid $(cat "$PIDFILE"))"
    echo "$DIR/info.json"
}

status() {
    instance_vars "$1"
    if running; then say "containerd $VER running (pid $(cat "$PIDFILE")), socket $SOCK"; cat "$DIR/info.json"
    else say "containerd $VER not running"; return 3; fi
}

[ $# -ge 2 ] || die "usage: $0 start|stop|restart|status VERSION"
case "$1" in
    start) start "$2" ;;
    stop) stop "$2" ;;
    restart) restart "$2" ;;
    status) status "$2" ;;
    *) die "usage: $0 start|stop|restart|status VERSION" ;;
esac
