#!/usr/bin/env bash
# The same packages on another Debian release (issue 13: "the same package installs on Debian 12, Debian 13 and
# Ubuntu 24.04"): dist/gpucr_*.deb and dist/gpucr-criu_*.deb (make package) installed into a fresh DIST root
# filesystem that has only DIST's own packages, as root:
#   1. mmdebstrap --variant=apt DIST (apt and the essential set; mmdebstrap from the host's apt into a private prefix
#      when the host lacks it; DIST's mirror as install/deps.sh reaches it, never the host's apt sources);
#   2. in a chroot (/proc, /sys, /dev bound; unmounted and the root removed on every exit):
#      `apt-get install ./gpucr_*.deb ./gpucr-criu_*.deb` resolves the dependencies from DIST alone; python3 is
#      DIST's (trixie 3.13, bookworm 3.11) and the CLI's imports come from /usr/lib/gpucr/site/cp<that> and no other;
#      `gpucr --version`; `gpucr doctor` exits 1 and its containerd check fails for the right reason (no containerd
#      socket: the root has no containerd); /usr/lib/gpucr/criu/criu --version runs with its own library closure;
#      systemd (DIST's, installed after the first install and purge, so it cannot mask a missing dependency)
#      `systemd-analyze verify`s the installed unit (second install) clean;
#   3. `apt-get purge gpucr gpucr-criu` and nothing left: no package known to dpkg, none of the packages' paths, no
#      /etc/gpucr, /var/lib/gpucr, /var/log/gpucr, and the file tree (paths, modes, sizes outside apt/dpkg state,
#      logs, caches) the same as before the second install (the first install and purge prove the dependencies
#      resolve from a bare root; the second is the one checked and compared).
# Any failure ends it with exit status 1 and the step that failed. The .debs apt downloads are kept in
# $GPUCR_DISTRO_CACHE/DIST (default /var/cache/gpucr-distro) so a second run downloads only the package lists.
# Usage (root): tests/package/distro_check.sh DIST   (DIST: trixie or bookworm)
set -euo pipefail
cd "$(dirname "$0")/../.."
DIST=${1:-}
case "$DIST" in
    trixie) PYVER=3.13 ;;
    bookworm) PYVER=3.11 ;;
    *) echo "usage: $0 trixie|bookworm" >&2; exit 2 ;;
esac
ABI=cp${PYVER/./}
say() { echo "== distro check $DIST: $*"; }
fail() { echo "== distro check $DIST: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "must run as root (it builds a root filesystem and chroots into it)"
shopt -s nullglob
debs=(dist/gpucr_*.deb dist/gpucr-criu_*.deb)
[ ${#debs[@]} -eq 2 ] || fail "want one dist/gpucr_*.deb and one dist/gpucr-criu_*.deb, found: ${debs[*]:-none} (run make package)"
shopt -u nullglob
CACHE=${GPUCR_DISTRO_CACHE:-/var/cache/gpucr-distro}
MIRROR="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $DIST main"
t0=$(date +%s)
lap() { echo "   ($(( $(date +%s) - t0 )) s)"; }

# -- mmdebstrap: the host's, or the host's apt's package unpacked into a private prefix (install/mmdebstrap.sh) --
# shellcheck source=install/mmdebstrap.sh
. install/mmdebstrap.sh
MMDEBSTRAP=$(find_mmdebstrap "$CACHE") || fail "no mmdebstrap (above)"

# -- the root filesystem and its clean-up: unmount what we mounted (reverse order), then remove it ---------------
root=$(mktemp -d /var/tmp/gpucr-distro-"$DIST".XXXXXX)
mounted=()
cleanup() {
    local rc=$? i
    for (( i=${#mounted[@]}-1; i>=0; i-- )); do
        umount "${mounted[$i]}" || umount -l "${mounted[$i]}" || echo "distro check: cannot unmount ${mounted[$i]}" >&2
    done
    if awk -v r="$root" '$5 == r || index($5, r "/") == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
        echo "== distro check $DIST: FAILED: mounts left under $root (left in place):" >&2
        awk -v r="$root" 'index($5, r) == 1 {print "   " $5}' /proc/self/mountinfo >&2
        exit 1
    fi
    rm -rf --one-file-system "$root"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
mkdir -p "$CACHE/$DIST"

say "mmdebstrap --variant=apt $DIST (only $DIST's packages; cached .debs from $CACHE/$DIST)"
"$MMDEBSTRAP" --quiet --mode=root --variant=apt --skip=essential/unlink --skip=cleanup/apt \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in $CACHE/$DIST /var/cache/apt/archives/" \
    "$DIST" "$root" "$MIRROR" || fail "mmdebstrap $DIST failed"
lap
for m in proc sys dev; do
    mount --bind "/$m" "$root/$m" || fail "mount --bind /$m $root/$m failed"
    mounted+=("$root/$m")
done
mkdir -p "$root/tmp/debs"; cp "${debs[@]}" "$root/tmp/debs/"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 "$@"; }
apt_in() { in_root apt-get -y -q -o Dpkg::Use-Pty=0 --no-install-recommends "$@"; }
install_gpucr() { apt_in install /tmp/debs/"$(basename "${debs[0]}")" /tmp/debs/"$(basename "${debs[1]}")"; }
# the file tree outside what apt, dpkg, logs and caches change by themselves
snapshot() {
    in_root find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /var/cache -o \
        -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/log -o -path /run \) -prune -o -printf '%p %m %s\n' \
        | sort
}

say "apt-get install ./${debs[0]#dist/} ./${debs[1]#dist/} in the bare $DIST root"
install_gpucr || fail "apt-get install of the packages did not resolve from $DIST's own packages"
py=$(in_root /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$py" = "$PYVER" ] || fail "python3 in $DIST is $py, expected $PYVER"
say "python3 $py ($(in_root dpkg-query -W -f '${Version}' python3)); installed: $(in_root dpkg-query -W -f '${Package} ${Version}  ' gpucr gpucr-criu)"
lap
say "apt-get purge (first install), then the tree the second install must give back"
apt_in purge gpucr gpucr-criu || fail "apt-get purge gpucr gpucr-criu (first install) failed"
say "apt-get install systemd ($DIST's, after the first install: it cannot mask a missing dependency)"
apt_in install systemd >/dev/null || fail "apt-get install systemd failed"
before=$(snapshot)
install_gpucr >/dev/null || fail "second apt-get install failed"

say "gpucr --version"
in_root /usr/bin/gpucr --version || fail "gpucr --version failed"
say "site dirs the CLI imports from (python3 -v): want only /usr/lib/gpucr/site/$ABI"
sites=$(in_root /usr/bin/python3 -IS -v /usr/bin/gpucr doctor 2>&1 | grep -o '/usr/lib/gpucr/site/cp3[0-9]*' | sort -u || true)
echo "   ${sites:-none}"
[ "$sites" = "/usr/lib/gpucr/site/$ABI" ] || fail "the CLI imported from '${sites:-nothing}' instead of /usr/lib/gpucr/site/$ABI"
in_root /usr/bin/python3 -IS -c "import sys; sys.path[:0] = ['/usr/lib/gpucr', '/usr/lib/gpucr/site/$ABI']
import grpc, google.protobuf, prometheus_client
from nri_plugin.cli.main import main
for m in (grpc, google.protobuf, prometheus_client):
    assert m.__file__.startswith('/usr/lib/gpucr/site/$ABI/'), m.__file__
print('   grpc', grpc.__version__, 'protobuf', google.protobuf.__version__, 'from /usr/lib/gpucr/site/$ABI')" \
    || fail "the shipped $ABI wheels do not import under $DIST's python3 $PYVER"

say "gpucr doctor (no containerd in this root: must exit 1 with the containerd check failing for that reason)"
drc=0; out=$(in_root /usr/bin/gpucr doctor 2>&1) || drc=$?
echo "$out" | sed 's/^/   /'
[ "$drc" -eq 1 ] || fail "gpucr doctor exited $drc, expected 1 (a failed check)"
echo "$out" | grep -Eq '^\[XX\] containerd: no containerd socket at /run/containerd/containerd\.sock$' \
    || fail "gpucr doctor's containerd check does not fail on the missing containerd socket"
echo "$out" | grep -Eq '^not ready: [0-9]+ required check\(s\) failed \(containerd, ' \
    || fail "gpucr doctor's verdict does not name the containerd check"
echo "$out" | grep -Eq '^\[ok\] CRIU: /usr/lib/gpucr/criu/criu Version: ' \
    || fail "gpucr doctor does not find gpucr-criu's CRIU at /usr/lib/gpucr/criu/criu"

say "/usr/lib/gpucr/criu/criu --version (gpucr-criu's CRIU with its own library closure)"
in_root /usr/lib/gpucr/criu/criu --version || fail "gpucr-criu's criu does not run on $DIST"
lap

say "systemd-analyze verify of the installed unit ($DIST's systemd)"
vout=$(in_root systemd-analyze verify /usr/lib/systemd/system/gpucr-plugin.service 2>&1) \
    || fail "systemd-analyze verify gpucr-plugin.service: $vout"
[ -z "$vout" ] || fail "systemd-analyze verify gpucr-plugin.service complains: $vout"
echo "   $(in_root systemctl --version | head -n1): clean"
lap

say "apt-get purge gpucr gpucr-criu, and nothing left"
apt_in purge gpucr gpucr-criu >/dev/null || fail "apt-get purge gpucr gpucr-criu failed"
left=$(in_root dpkg-query -W -f '${Package} ${db:Status-Abbrev}\n' gpucr gpucr-criu 2>/dev/null | awk '$2 != "un"' || true)
[ -z "$left" ] || fail "dpkg still knows: $left"
for p in /usr/lib/gpucr /usr/libexec/gpucr /usr/bin/gpucr /etc/gpucr /var/lib/gpucr /var/log/gpucr \
    /usr/lib/systemd/system/gpucr-plugin.service /usr/share/doc/gpucr /usr/share/doc/gpucr-criu; do
    [ ! -e "$root$p" ] || fail "$p is left after the purge"
done
# the second install's changes all gone: the tree (paths, modes, sizes) as before it
after=$(snapshot)
diff <(echo "$before") <(echo "$after") >/dev/null \
    || fail "the tree differs from before the second install: $(diff <(echo "$before") <(echo "$after") | grep '^[<>]' | head -n 20)"
# the first dpkg-deb path listing too: none of the packages' files exists
for d in "${debs[@]}"; do
    while read -r f; do
        [ -d "$root$f" ] && continue  # shared dirs (/usr/bin, /usr/share/doc ...) stay
        [ ! -e "$root$f" ] || fail "$f (from $(basename "$d")) is left after the purge"
    done < <(dpkg-deb -c "$d" | awk '{print substr($6, 2)}' | sed 's:/$::')
done
cp -n "$root"/var/cache/apt/archives/*.deb "$CACHE/$DIST/" 2>/dev/null || true
say "PASS ($(( $(date +%s) - t0 )) s)"
