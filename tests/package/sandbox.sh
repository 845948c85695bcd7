#!/usr/bin/env bash
# Run a command (tests/package/roundtrip.py) where installing and purging gpucr cannot touch this machine's own
# files: a private mount namespace in which /usr, /etc, /var/lib, /var/cache and /var/log are overlays whose writes
# land in a tmpfs (GPUCR_TEST_ROOT, where containerd keeps its overlayfs snapshots, is bound back over its overlay:
# overlayfs cannot stack on an overlay's upper layer), and /run/gpucr is an empty tmpfs; gpucr's paths that other
# checkouts made on the host are hidden in it (whiteouts in the overlays). For shared development machines,
# where other checkouts' tests use /usr/lib/gpucr and /usr/libexec/gpucr; CI's fresh machine runs the test directly.
# Everything goes when the command ends (the namespace and its mounts die with it).
# Usage (root): tests/package/sandbox.sh CMD [ARG...]
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "tests/package/sandbox.sh: must run as root" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: $0 CMD [ARG...]" >&2; exit 1; }
up=$(mktemp -d /tmp/gpucr-sandbox.XXXXXX)
rc=0
GPUCR_SANDBOX_UP=$up unshare --mount --propagation private -- bash -c '
    set -euo pipefail
    up=$GPUCR_SANDBOX_UP
    mount -t tmpfs -o mode=0700 gpucr-sandbox "$up"
    root=${GPUCR_TEST_ROOT:-/var/lib/gpucr-test}
    mkdir -p "$up/keep"; mount --bind "$root" "$up/keep"
    for d in /usr /etc /var/lib /var/cache /var/log; do
        n=${d//\//_}; mkdir -p "$up/u$n" "$up/w$n"
        mount -t overlay overlay -o "lowerdir=$d,upperdir=$up/u$n,workdir=$up/w$n" "$d"
    done
    mount --move "$up/keep" "$root"
    # what other checkouts on this machine put there, hidden by whiteouts in the overlays (the host keeps it)
    rm -rf /usr/lib/gpucr /usr/libexec/gpucr /etc/gpucr /var/lib/gpucr /var/log/gpucr
    mkdir -p /run/gpucr; mount -t tmpfs -o mode=0755 gpucr-sandbox /run/gpucr
    "$@"
' sandbox "$@" || rc=$?
rmdir "$up"
exit "$rc"
