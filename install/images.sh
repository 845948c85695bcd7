#!/usr/bin/env bash
# Build gpucr's local test images (no registry is reachable) and import them into a running private containerd.
#   localhost/gpucr-busybox:test  busybox-static rootfs, Cmd /bin/sh
#   localhost/gpucr-pause:test    the same layer, Entrypoint: a shell that sleeps and exits on SIGTERM (CRI sandbox)
# Usage: install/images.sh build            (writes $GPUCR_TEST_ROOT/images/*.tar, idempotent)
#        install/images.sh import CTR SOCK  (imports both into namespaces k8s.io and default)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=install/lib.sh
. "$here/lib.sh"

IMG_DIR=$GPUCR_TEST_ROOT/images
BUSYBOX_REF=localhost/gpucr-busybox:test
PAUSE_REF=localhost/gpucr-pause:test

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_tar NAME REF CONFIG_JSON_FRAGMENT: one-layer OCI layout tar in $IMG_DIR/NAME.tar
oci_tar() {
    local name=$1 ref=$2 cfg=$3
    local o=$IMG_DIR/$name.work
    rm -rf "$o"; mkdir -p "$o/oci/blobs/sha256"
    local ld ls cd cs md ms
    ld=$(sha "$IMG_DIR/layer.tar"); ls=$(stat -c %s "$IMG_DIR/layer.tar")
    cp "$IMG_DIR/layer.tar" "$o/oci/blobs/sha256/$ld"
    printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$cfg" "$ld" > "$o/c.json"
    cd=$(sha "$o/c.json"); cs=$(stat -c %s "$o/c.json"); mv "$o/c.json" "$o/oci/blobs/sha256/$cd"
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" > "$o/m.json"
    md=$(sha "$o/m.json"); ms=$(stat -c %s "$o/m.json"); mv "$o/m.json" "$o/oci/blobs/sha256/$md"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' "$md" "$ms" "$ref" "${ref##*:}" > "$o/oci/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' > "$o/oci/oci-layout"
    tar --owner=0 --group=0 --numeric-owner -C "$o/oci" -cf "$IMG_DIR/$name.tar.tmp" .
    mv "$IMG_DIR/$name.tar.tmp" "$IMG_DIR/$name.tar"
    rm -rf "$o"
}

build() {
    if [ -f "$IMG_DIR/busybox.tar" ] && [ -f "$IMG_DIR/pause.tar" ]; then return 0; fi
    [ -x /bin/busybox ] || die "busybox-static is missing: run install/deps.sh first"
    mkdir -p "$IMG_DIR"
    local r=$IMG_DIR/rootfs a
    rm -rf "$r"; mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,root,data,run,var}
    cp /bin/busybox "$r/bin/busybox"
    for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -sf busybox "$r/bin/$a"; done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"; echo 'root:x:0:' > "$r/etc/group"; chmod 1777 "$r/tmp"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$r" -cf "$IMG_DIR/layer.tar" .
    oci_tar busybox "$BUSYBOX_REF" '{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]}'
    oci_tar pause "$PAUSE_REF" '{"Env":["PATH=/bin"],"Entrypoint":["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 86400 & wait $!; done"]}'
    rm -rf "$r" "$IMG_DIR/layer.tar"
}

import() {
    local ctr=$1 sock=$2 ns t
    build
    for ns in k8s.io default; do
        for t in busybox pause; do
            "$ctr" --address "$sock" -n "$ns" images import "$IMG_DIR/$t.tar" >/dev/null \
                || die "ctr images import $t.tar into namespace $ns failed"
        done
    done
}

case "${1:-build}" in
    build) build ;;
    import) [ $# -eq 3 ] || die "usage: $0 import CTR SOCK"; import "$2" "$3" ;;
    *) die "usage: $0 [build|import CTR SOCK]" ;;
esac
