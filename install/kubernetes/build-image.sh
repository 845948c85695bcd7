#!/usr/bin/env bash
# The image of daemonset.yaml without docker: the same image the Dockerfile beside this file builds (a Debian root with
# gpucr's packages installed by apt, and util-linux for the init container's nsenter), as an OCI image archive that
# `ctr -n k8s.io images import` (containerd) or `podman load` takes, named ghcr.io/gpucr/gpucr:<package version>.
#
#   1. mmdebstrap --variant=apt DIST (default trixie; its python3 must be one the package ships wheels for) with
#      util-linux, then `apt-get install ./gpucr_*.deb ./gpucr-criu_*.deb` in it (dependencies from DIST alone), apt's
#      lists and caches and /dev's nodes left out: one root-owned layer tar; with SOURCE_DATE_EPOCH (default: the
#      package's mtime) mmdebstrap makes it reproducible;
#   2. the OCI layout around it (written here: oci-layout, index.json with the ref name, the manifest, the config,
#      the layer, uncompressed), packed as OUT.tar.
# Usage (root): install/kubernetes/build-image.sh OUT.tar [--debs DIR] [--dist trixie|bookworm]
#   DIR (default dist/, from `make package`) holds one gpucr_*.deb and one gpucr-criu_*.deb.
# The .debs apt downloads are kept in $GPUCR_DISTRO_CACHE/DIST (default /var/cache/gpucr-distro, shared with
# tests/package/distro_check.sh).
set -euo pipefail
umask 022
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
die() { printf 'gpucr image: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr image: %s\n' "$*" >&2; }

OUT= DEBS=$repo/dist DIST=trixie
while [ $# -gt 0 ]; do
    case "$1" in
        --debs) DEBS=$2; shift 2 ;;
        --dist) DIST=$2; shift 2 ;;
        -*) die "unknown option '$1' (usage: $0 OUT.tar [--debs DIR] [--dist trixie|bookworm])" ;;
        *) [ -z "$OUT" ] || die "one OUT.tar only (got '$OUT' and '$1')"; OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || die "usage: $0 OUT.tar [--debs DIR] [--dist trixie|bookworm]"
case "$DIST" in
    trixie|bookworm) ;;
    *) die "--dist $DIST: trixie or bookworm (the releases the package is tested on)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap --mode=root: the image's files are root's)"
shopt -s nullglob
debs=("$DEBS"/gpucr_*.deb "$DEBS"/gpucr-criu_*.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 2 ] \
    || die "want one gpucr_*.deb and one gpucr-criu_*.deb in $DEBS, found: ${debs[*]:-none} (run make package)"
VERSION=$(dpkg-deb -f "${debs[0]}" Version) || die "dpkg-deb cannot read ${debs[0]}"
VERSION=${VERSION%-*}
REF=ghcr.io/gpucr/gpucr:$VERSION
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "${debs[0]}")}
CACHE=${GPUCR_DISTRO_CACHE:-/var/cache/gpucr-distro}
MIRROR="deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $DIST main"
# shellcheck source=install/mmdebstrap.sh
. "$repo/install/mmdebstrap.sh"
MMDEBSTRAP=$(find_mmdebstrap "$CACHE") || die "no mmdebstrap (above)"

work=$(mktemp -d "$(dirname -- "$(readlink -m -- "$OUT")")/.gpucr-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$CACHE/$DIST" "$work/debs"
cp "${debs[@]}" "$work/debs/"
in_root='chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8'
apt_install="apt-get install -y -q -o Dpkg::Use-Pty=0 --no-install-recommends"
say "mmdebstrap --variant=apt $DIST + util-linux + $(basename "${debs[0]}") $(basename "${debs[1]}")" \
    "(SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
"$MMDEBSTRAP" --quiet --mode=root --variant=apt --include=util-linux --skip=output/dev \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives' \
    --setup-hook="sync-in $CACHE/$DIST /var/cache/apt/archives/" \
    --customize-hook="copy-in $work/debs /tmp" \
    --customize-hook="$in_root sh -c '$apt_install /tmp/debs/*.deb'" \
    --customize-hook="sync-out /var/cache/apt/archives $CACHE/$DIST" \
    --customize-hook='rm -rf "$1"/tmp/debs "$1"/var/cache/apt/archives/*.deb' \
    --customize-hook="$in_root sh -c 'gpucr --version && nsenter --version'" \
    "$DIST" "$work/layer.tar" "$MIRROR" >&2 || die "mmdebstrap $DIST failed"

say "OCI layout for $REF"
python3 -S -E - "$work" "$REF" "$VERSION" "$SOURCE_DATE_EPOCH" <<'PY' || die "packing the OCI archive failed"
import datetime, hashlib, json, os, sys, tarfile
work, ref, version, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
oci = os.path.join(work, "oci")
os.makedirs(os.path.join(oci, "blobs/sha256"))
def blob_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    d = h.hexdigest()
    os.rename(path, os.path.join(oci, "blobs/sha256", d))
    return {"digest": f"sha256:{d}", "size": os.path.getsize(os.path.join(oci, "blobs/sha256", d))}
def blob(obj):
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    path = os.path.join(work, "blob.tmp")
    with open(path, "wb") as f:
        f.write(data)
    return blob_file(path)
layer = blob_file(os.path.join(work, "layer.tar"))
created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
labels = {"org.opencontainers.image.title": "gpucr", "org.opencontainers.image.version": version,
          "org.opencontainers.image.description":
              "gpucr's packages on Debian: the image of install/kubernetes/daemonset.yaml"}
config = blob({"architecture": "amd64", "os": "linux", "created": created,
               "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                          "Cmd": ["gpucr", "--version"], "Labels": labels},
               "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
               "history": [{"created": created, "created_by": "install/kubernetes/build-image.sh"}]})
manifest = blob({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                 "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
                 "annotations": {"org.opencontainers.image.version": version}})
index = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
    "platform": {"architecture": "amd64", "os": "linux"},
    "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}}]}
with open(os.path.join(oci, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True, separators=(",", ":"))
with open(os.path.join(oci, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
def norm(ti):
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.mtime = epoch
    return ti
with tarfile.open(os.path.join(work, "image.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
    blobs = sorted(os.listdir(os.path.join(oci, "blobs/sha256")))
    for name in ["oci-layout", "index.json"] + [f"blobs/sha256/{n}" for n in blobs]:
        tar.add(os.path.join(oci, name), arcname=name, filter=norm)
print(manifest["digest"])
PY
mv "$work/image.tar" "$OUT"
say "built $OUT: $REF ($(du -h "$OUT" | cut -f1)); load it with: ctr -n k8s.io images import $OUT"
