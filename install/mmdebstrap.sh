# shellcheck shell=bash
# find_mmdebstrap CACHE: print the mmdebstrap to use: the host's, or the host apt's mmdebstrap package unpacked into
# CACHE/tools (a perl script; it needs the host's apt, which it uses with the target release's own mirror). Exits 1
# with the reason when neither is possible. Sourced by tests/package/distro_check.sh and
# install/kubernetes/build-image.sh.
find_mmdebstrap() {
    local cache=$1 tools
    if command -v mmdebstrap; then return 0; fi
    tools=$cache/tools
    if [ ! -x "$tools/usr/bin/mmdebstrap" ]; then
        if ! command -v apt-get >/dev/null; then
            echo "error: mmdebstrap is not installed and there is no apt-get to fetch it (install mmdebstrap)" >&2
            return 1
        fi
        echo "mmdebstrap is not installed: unpacking the host apt's mmdebstrap into $tools" >&2
        rm -rf "$tools.dl"; mkdir -p "$tools.dl"; chown _apt "$tools.dl" 2>/dev/null || true
        if ! (cd "$tools.dl" && apt-get download -qq mmdebstrap) >&2; then
            echo "error: apt-get download mmdebstrap failed (install mmdebstrap, or reach the host's apt mirror)" >&2
            return 1
        fi
        rm -rf "$tools"; dpkg-deb -x "$tools.dl"/mmdebstrap_*.deb "$tools"; rm -rf "$tools.dl"
    fi
    echo "$tools/usr/bin/mmdebstrap"
}
