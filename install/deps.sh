#!/usr/bin/env bash
# Install (or remove) the real components gpucr's tests and demo use, on Debian 12 or 13, as root:
#   runc, iptables, busybox-static (system packages);
#   containerd 1.7.24 (trixie) and 2.1.9 (sid), both, side by side, extracted under $GPUCR_TEST_ROOT/opt;
#   CRIU >= 4.1 (trixie's 4.1.1; on Debian 12 through a private sysroot, since bookworm's 3.17 fails on
#   kernels >= 6.13 with "vdso: Unexpected rt vDSO area bounds");
#   the CRI api.proto shipped by Debian (golang-github-kubernetes-cri-api-dev), compiled by tools/genproto.py.
# Idempotent: a second run checks and returns quickly.
#
# Usage: install/deps.sh [install|uninstall|check]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=install/lib.sh
. "$here/lib.sh"

STAMP=$GPUCR_TEST_ROOT/.deps-v1
SYS_PKGS=(runc iptables busybox-static ca-certificates)
# shared libraries trixie's criu binary needs, under bookworm's (matching) sonames
CRIU_LIBS_12=(libnet1 libnl-3-200 libprotobuf-c1 libnftables1 libbsd0 libgnutls30 libuuid1 libcap2)

check() {
    local ok=0 v
    for v in "${CONTAINERD_VERSIONS[@]}"; do
        "$(containerd_prefix "$v")/usr/bin/containerd" --version 2>/dev/null | grep -q " $v" || { say "missing: containerd $v"; ok=1; }
    done
    command -v runc >/dev/null || { say "missing: runc"; ok=1; }
    command -v iptables-restore >/dev/null || { say "missing: iptables"; ok=1; }
    [ -x /bin/busybox ] || { say "missing: busybox-static"; ok=1; }
    local cv; cv=$("$BIN/criu" --version 2>/dev/null | sed -n 's/^Version: *//p')
    case "$cv" in 4.[1-9]*|[5-9].*) ;; *) say "missing: criu >= 4.1 (found '${cv:-none}')"; ok=1 ;; esac
    [ -f "$OPT/cri-api/api.proto" ] || { say "missing: CRI api.proto"; ok=1; }
    return $ok
}

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
    local pkgs=("${SYS_PKGS[@]}")
    [ "$major" = 12 ] && pkgs+=("${CRIU_LIBS_12[@]}")
    [ "$major" = 13 ] && pkgs+=(criu)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null \
        || die "apt-get install ${pkgs[*]} failed"

    say "fetching containerd ${CONTAINERD_VERSIONS[*]}, CRIU and the CRI api through a private apt source list"
    cat > "$APT_DIR/sources.list" <<LIST
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
LIST
    apt_private update -qq --error-on=any >/dev/null 2>&1 || die "private apt update (trixie, sid) failed: no network to the Debian package registry?"
    local debs=$GPUCR_TEST_ROOT/debs v full
    rm -f "$debs"/*.deb
    for v in "${CONTAINERD_VERSIONS[@]}"; do
        full=$(apt_cache_private madison containerd 2>/dev/null | awk -v v="$v" '$3 ~ "^"v"[~+]" {print $3; exit}')
        [ -n "$full" ] || die "containerd $v is not offered by trixie/sid any more (apt-cache madison containerd)"
        mkdir -p "$debs/containerd-$v"
        (cd "$debs/containerd-$v" && rm -f ./*.deb && apt_private download "containerd=$full" >/dev/null 2>&1) \
            || die "download of containerd=$full failed"
        rm -rf "$(containerd_prefix "$v")"
        dpkg-deb -x "$debs/containerd-$v"/containerd_*.deb "$(containerd_prefix "$v")"
    done
    (cd "$debs" && apt_private download golang-github-kubernetes-cri-api-dev/trixie >/dev/null 2>&1) \
        || die "download of golang-github-kubernetes-cri-api-dev failed"
    rm -rf "$OPT/cri-api" "$debs/cri-x"; mkdir -p "$OPT/cri-api"
    dpkg-deb -x "$debs"/golang-github-kubernetes-cri-api-dev_*.deb "$debs/cri-x"
    cp "$debs/cri-x/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto" "$OPT/cri-api/api.proto"
    rm -rf "$debs/cri-x"

    if [ "$major" = 12 ]; then
        # trixie's criu needs GLIBC_2.38: run it through trixie's loader and libc, bookworm's other libs after.
        (cd "$debs" && apt_private download criu/trixie libcompel1/trixie libc6/trixie >/dev/null 2>&1) \
            || die "download of criu/libcompel1/libc6 from trixie failed"
        rm -rf "$OPT/criu-sysroot"; mkdir -p "$OPT/criu-sysroot"
        for d in "$debs"/criu_*.deb "$debs"/libcompel1_*.deb "$debs"/libc6_*.deb; do dpkg-deb -x "$d" "$OPT/criu-sysroot"; done
        cat > "$BIN/criu" <<WRAP
#!/bin/sh
# CRIU 4.1 from Debian trixie on Debian 12 (written by gpucr install/deps.sh). The loader is named explicitly
# (no LD_LIBRARY_PATH), so the programs criu itself runs (iptables-restore, ...) use the system libc.
S=$OPT/criu-sysroot
L=\$S/usr/lib/x86_64-linux-gnu
exec \$L/ld-linux-x86-64.so.2 --library-path \$L:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu \$S/usr/sbin/criu "\$@"
WRAP
        chmod 0755 "$BIN/criu"
    else
        ln -sf /usr/sbin/criu "$BIN/criu"
    fi
    check || die "installation incomplete (see the 'missing:' lines above)"
    date -u +%FT%TZ > "$STAMP"
    say "installed: $("$BIN/criu" --version | head -1), runc $(runc --version | sed -n '1s/runc version //p'), containerd ${CONTAINERD_VERSIONS[*]}"
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
