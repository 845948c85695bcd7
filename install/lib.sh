# shellcheck shell=bash
# Shared helpers for gpucr's install scripts. Sourced, never run.
#
# Everything the scripts create lives under GPUCR_TEST_ROOT (default /var/lib/gpucr-test):
#   opt/            extracted binaries (containerd 1.7.24 and 2.1.9; criu-<version>: CRIU 4.2.x and its libraries),
#                   the CRI api.proto
#   bin/            criu (runs opt/criu-<version> through its own loader: the CRIU the tests and the demo use)
#   apt/, debs/     private apt state and downloaded .debs (the system's apt configuration is untouched)
#   images/         locally built OCI image tars (busybox test image, pause image)
#   ctrd-<ver>/     one private containerd instance per version (root, state, sockets, NRI dirs, log)
# plus, while an instance runs: cgroups /sys/fs/cgroup/*/gpucr-test-<ver>, shim sockets in /run/containerd/s.

set -euo pipefail

GPUCR_TEST_ROOT=${GPUCR_TEST_ROOT:-/var/lib/gpucr-test}
OPT=$GPUCR_TEST_ROOT/opt
BIN=$GPUCR_TEST_ROOT/bin
CONTAINERD_VERSIONS=(1.7.24 2.1.9)

die() { printf 'gpucr install: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr install: %s\n' "$*" >&2; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts containerd); try: sudo $0 $*"
}

# Echo 12 or 13; anything else stops set-up with one clear line.
DEBIAN_VERSION_FILE=${GPUCR_DEBIAN_VERSION_FILE:-/etc/debian_version}
debian_major() {
    [ -r "$DEBIAN_VERSION_FILE" ] || die "unsupported distribution: $DEBIAN_VERSION_FILE is missing (Debian 12 or 13 required)"
    local v; v=$(cut -d. -f1 "$DEBIAN_VERSION_FILE")
    case "$v" in
        12|13) echo "$v" ;;
        trixie*) echo 13 ;;
        *) die "unsupported distribution: Debian '$(cat "$DEBIAN_VERSION_FILE")' (Debian 12 bookworm or 13 trixie required)" ;;
    esac
}

# Resolve "1.7" / "2.1" / "1.7.24" to a supported full version.
containerd_version() {
    local want=${1:-} v
    for v in "${CONTAINERD_VERSIONS[@]}"; do
        case "$v" in "$want"|"$want".*) echo "$v"; return 0 ;; esac
    done
    die "unsupported containerd version '${want}' (choose one of: ${CONTAINERD_VERSIONS[*]})"
}

containerd_prefix() { echo "$OPT/containerd-$1"; }

# Private apt configuration for trixie and sid, kept under GPUCR_TEST_ROOT.
APT_DIR=$GPUCR_TEST_ROOT/apt
_apt_opts() {
    printf '%s\n' -o "Dir::Etc::sourcelist=$APT_DIR/sources.list" -o Dir::Etc::sourceparts=/dev/null \
        -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o APT::Get::List-Cleanup=0
}
apt_private() { local o; mapfile -t o < <(_apt_opts); apt-get "${o[@]}" "$@"; }
apt_cache_private() { local o; mapfile -t o < <(_apt_opts); apt-cache "${o[@]}" "$@"; }
