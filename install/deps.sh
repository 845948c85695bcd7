#!/usr/bin/env bash
# Install (or remove) the real components gpucr's tests and demo use, on Debian 12 or 13, as root:
#   runc, iptables, busybox-static (system packages);
#   containerd 1.7.24 (trixie) and 2.1.9 (sid), both, side by side, extracted under $GPUCR_TEST_ROOT/opt;
#   CRIU 4.2.x from Debian sid with its whole library closure (CRIU_PKGS) in a private sysroot, run through that
#   sysroot's own loader, so the host's glibc does not matter (Debian 12 and 13 alike): bookworm's 3.17 fails on
#   kernels >= 6.13 ("vdso: Unexpected rt vDSO area bounds"), trixie's 4.1.1 on kernels >= 6.16 as soon as the
#   process has a TCP/UDP socket ("Can't get 1:16 opt: Operation not supported"); $BIN/criu runs it (the CRIU the
#   tests, the demo and their CRIU front use);
#   the CRI api.proto shipped by Debian (golang-github-kubernetes-cri-api-dev), compiled by tools/genproto.py.
# Idempotent: a second run checks and returns quickly.
#
# Usage: install/deps.sh [install|uninstall|check]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=install/lib.sh
. "$here/lib.sh"

STAMP=$GPUCR_TEST_ROOT/.deps-v2
SYS_PKGS=(runc iptables busybox-static ca-certificates)
# sid's criu and the closure of the shared libraries it loads (libc6 brings the loader), all from sid
CRIU_PKGS=(criu libcompel1 libnet9 libnl-3-200 libnftables1 libmnl0 libnftnl11 libjansson4 libxtables12 libgmp10
    libgnutls30t64 libhogweed6t64 libnettle8t64 libidn2-0 libp11-kit0 libffi8 libtasn1-6 libunistring5
    libprotobuf-c1 libuuid1 libbsd0 libmd0 libc6 libgcc-s1)
CRIU_MIN=4.2

check() {
    local ok=0 v
    for v in "${CONTAINERD_VERSIONS[@]}"; do
        has_containerd "$v" || { say "missing: containerd $v"; ok=1; }
    done
    command -v runc >/dev/null || { say "missing: runc"; ok=1; }
    command -v iptables-restore >/dev/null || { say "missing: iptables"; ok=1; }
    [ -x /bin/busybox ] || { say "missing: busybox-static"; ok=1; }
    has_criu || { say "missing: criu >= $CRIU_MIN at $BIN/criu (found '$(criu_version)')"; ok=1; }
    [ -f "$OPT/cri-api/api.proto" ] || { say "missing: CRI api.proto"; ok=1; }
    return $ok
}

has_containerd() { "$(containerd_prefix "$1")/usr/bin/containerd" --version 2>/dev/null | grep -q " $1"; }
criu_version() { "$BIN/criu" --version 2>/dev/null | sed -n 's/^Version: *//p' || true; }
has_criu() { case "$(criu_version)" in 4.[2-9]*|[5-9].*) return 0 ;; *) return 1 ;; esac; }

net_check() {
    # One clear line when the package registry cannot be reached (apt would otherwise print pages).
    if ! timeout 60 apt-get update -qq --error-on=any >/dev/null 2>"$GPUCR_TEST_ROOT/apt-update.err"; then
        die "no network to the Debian package registry (apt-get update failed: $(tail -1 "$GPUCR_TEST_ROOT/apt-update.err"))"
    fi
}

install() {
    need_root install
    local major; major=$(debian_major)
    if [ -f "$STAMP" ] && check 2>/dev/null; then
        say "dependencies already installed under $GPUCR_TEST_ROOT"
        return 0
    fi
    mkdir -p "$GPUCR_TEST_ROOT" "$OPT" "$BIN" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$GPUCR_TEST_ROOT/debs"
    chmod 0700 "$GPUCR_TEST_ROOT"
    say "Debian $major: installing ${SYS_PKGS[*]}"
    net_check
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${SYS_PKGS[@]}" >/dev/null \
        || die "apt-get install ${SYS_PKGS[*]} failed"

    say "fetching what is missing of containerd ${CONTAINERD_VERSIONS[*]}, CRIU >= $CRIU_MIN and the CRI api through a private apt source list"
    cat > "$APT_DIR/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
    apt_private update -qq --error-on=any >/dev/null 2>&1 || die "private apt update (trixie, sid) failed: no network to the Debian package registry?"
    local debs=$GPUCR_TEST_ROOT/debs v full
    rm -f "$debs"/*.deb
    for v in "${CONTAINERD_VERSIONS[@]}"; do
        has_containerd "$v" && continue  # never replaced under a running instance
        full=$(apt_cache_private madison containerd 2>/dev/null | awk -v v="$v" '$3 ~ "^"v"[~+]" {print $3; exit}')
        [ -n "$full" ] || die "containerd $v is not offered by trixie/sid any more (apt-cache madison containerd)"
        mkdir -p "$debs/containerd-$v"
        (cd "$debs/containerd-$v" && rm -f ./*.deb && apt_private download "containerd=$full" >/dev/null 2>&1) \
            || die "download of containerd=$full failed"
        rm -rf "$(containerd_prefix "$v")"
        dpkg-deb -x "$debs/containerd-$v"/containerd_*.deb "$(containerd_prefix "$v")"
    done
    if [ ! -f "$OPT/cri-api/api.proto" ]; then
        (cd "$debs" && apt_private download golang-github-kubernetes-cri-api-dev/trixie >/dev/null 2>&1) \
            || die "download of golang-github-kubernetes-cri-api-dev failed"
        rm -rf "$OPT/cri-api" "$debs/cri-x"; mkdir -p "$OPT/cri-api"
        dpkg-deb -x "$debs"/golang-github-kubernetes-cri-api-dev_*.deb "$debs/cri-x"
        cp "$debs/cri-x/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto" "$OPT/cri-api/api.proto"
        rm -rf "$debs/cri-x"
    fi
    has_criu || install_criu "$debs/criu"
    check || die "installation incomplete (see the 'missing:' lines above)"
    rm -f "$GPUCR_TEST_ROOT"/.deps-v1  # an earlier gpucr's stamp
    date -u +%FT%TZ > "$STAMP"
    say "installed: $("$BIN/criu" --version | head -1), runc $(runc --version | sed -n '1s/runc version //p'), containerd ${CONTAINERD_VERSIONS[*]}"
}

# sid's CRIU and its library closure, each .deb extracted into $OPT/criu-<version>; $BIN/criu runs it through that
# sysroot's loader with only the sysroot's libraries (no LD_LIBRARY_PATH: the programs criu itself runs, such as
# iptables-restore, use the system's libc). The wrapper is replaced in one rename, then older sysroots are removed.
install_criu() {
    local dir=$1 p
    mkdir -p "$dir"; rm -f "$dir"/*.deb
    (cd "$dir" && apt_private download "${CRIU_PKGS[@]/%//sid}" >/dev/null 2>"$dir/download.err") \
        || die "download of CRIU from sid failed ($(grep -m1 '^E:' "$dir/download.err" || tail -n1 "$dir/download.err")): apt-cache madison criu shows what sid offers"
    local version; version=$(dpkg-deb -f "$dir"/criu_*.deb Version)
    local sysroot=$OPT/criu-${version//[^A-Za-z0-9.+-]/_}
    rm -rf "$sysroot.new"; mkdir -p "$sysroot.new"
    for p in "${CRIU_PKGS[@]}"; do dpkg-deb -x "$dir/${p}"_*.deb "$sysroot.new"; done
    local lib=$sysroot.new/usr/lib/x86_64-linux-gnu
    [ -x "$lib/ld-linux-x86-64.so.2" ] || die "sid's libc6 has no loader at /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    local missing
    missing=$("$lib/ld-linux-x86-64.so.2" --library-path "$lib:$sysroot.new/lib/x86_64-linux-gnu" --list \
        "$sysroot.new/usr/sbin/criu" 2>&1 | awk '/not found/ {print $1}' | tr '\n' ' ')
    [ -z "$missing" ] || die "sid's criu needs libraries outside CRIU_PKGS in install/deps.sh: ${missing}(add their packages)"
    rm -rf "$sysroot"; mv "$sysroot.new" "$sysroot"
    cat > "$BIN/criu.new" <<WRAP
#!/bin/sh
# CRIU $version from Debian sid (written by gpucr install/deps.sh), run through its own sysroot's loader and
# libraries; no LD_LIBRARY_PATH, so the programs criu runs use the system's libc.
S=$sysroot
exec \$S/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path \$S/usr/lib/x86_64-linux-gnu:\$S/lib/x86_64-linux-gnu \$S/usr/sbin/criu "\$@"
WRAP
    chmod 0755 "$BIN/criu.new"
    mv -f "$BIN/criu.new" "$BIN/criu"
    for p in "$OPT"/criu-*; do
        [ "$p" = "$sysroot" ] || rm -rf "$p"  # older sysroots (criu-sysroot: trixie's 4.1.1 of earlier gpucr)
    done
}

uninstall() {
    need_root uninstall
    local v
    for v in "${CONTAINERD_VERSIONS[@]}"; do "$here/containerd.sh" stop "$v" || true; done
    rm -rf "$GPUCR_TEST_ROOT"
    say "removed $GPUCR_TEST_ROOT (system packages runc, iptables, busybox-static are left installed)"
}

case "${1:-install}" in
    install) install ;;
    uninstall) uninstall ;;
    check) check && say "all dependencies present" ;;
    *) die "usage: $0 [install|uninstall|check]" ;;
esac
