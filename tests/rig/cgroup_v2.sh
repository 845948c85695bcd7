#!/usr/bin/env bash
# Test-rig only: run a command (the v2 leg of `make test`) on a cgroup-v2-only view of a hybrid cgroup host.
#
# A private mount namespace (`unshare -m --propagation private`) in which the v1 hierarchies are unmounted and
# cgroup2 is mounted on /sys/fs/cgroup: everything started in it (pytest, containerd, shims, runc, CRIU, the CRIU
# front) sees a host with cgroup v2 only, as stock Debian 12/13 and Ubuntu 24.04 are (measurements:
# ../shared reference test-environment.md, "cgroup v2 on this hybrid VM"). That view delegates only hugetlb, so a
# rig-only runc wrapper (tests/rig/runc_v2.py, installed as GPUCR_TEST_ROOT/rig-v2[-INSTANCE]/bin/runc) drops the
# limits runc could not set; it is first on PATH and install/containerd.sh makes it the instance's runtime binary
# (GPUCR_RUNC_DIR). The namespace, its mounts and the wrapper are gone when the command ends.
#
# Usage: tests/rig/cgroup_v2.sh COMMAND [ARGS...]      (as root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { printf 'gpucr rig: error: %s\n' "$*" >&2; exit 1; }
root=${GPUCR_TEST_ROOT:-/var/lib/gpucr-test}
rig=$root/rig-v2${GPUCR_INSTANCE:+-$GPUCR_INSTANCE}

if [ "${1:-}" = --inside ]; then
    shift
    umount -R /sys/fs/cgroup
    # a v1 hierarchy mounted elsewhere right now (another run's CRIU cgroup yard, /tmp/.criu.cgyard.*) would stay in
    # this private copy for the whole leg and make /proc/self/mountinfo claim a v1 freezer: drop those too
    awk '/ - cgroup / {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
    mount -t cgroup2 none /sys/fs/cgroup
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || die "/sys/fs/cgroup is not cgroup2 after mounting it"
    ! grep -q ' - cgroup ' /proc/self/mountinfo || die "v1 cgroup mounts are still visible in the namespace"
    export PATH=$rig/bin:$PATH GPUCR_RUNC_DIR=$rig/bin
    exec "$@"
fi

[ $# -ge 1 ] || die "usage: $0 COMMAND [ARGS...]"
[ "$(id -u)" -eq 0 ] || die "the cgroup-v2 leg needs root (a mount namespace and cgroupfs): run it as root"
[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] || die "this host is cgroup v2 only already: run the command directly"
grep -q ' - cgroup2 ' /proc/self/mountinfo || die "this kernel has no cgroup2 hierarchy mounted (needed for the v2 leg)"
runc=$(command -v runc) || die "runc not found on PATH"
case "$runc" in "$rig"/*) die "runc on PATH is the rig's own wrapper ($runc): run this from a plain shell" ;; esac
mkdir -p "$rig/bin"
sed "s|@RUNC@|$runc|" "$here/runc_v2.py" > "$rig/bin/runc.tmp"
chmod 0755 "$rig/bin/runc.tmp"
mv -f "$rig/bin/runc.tmp" "$rig/bin/runc"
trap 'rm -rf "$rig"' EXIT
rc=0
unshare -m --propagation private "$here/cgroup_v2.sh" --inside "$@" || rc=$?
exit $rc
