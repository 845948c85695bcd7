# shellcheck shell=bash
# gpucr's code as a root-owned copy, for what runs as root (the CRIU front, the OCI hook): never the checkout, which
# its owner can change. Sourced by install/front.sh, install/hook.sh and install/plugin.sh (they define die, say,
# $repo, $PYTHON).
#
# PREFIX (default /usr/lib/gpucr) gets nri_plugin/ and hooks/: the checkout's .py files (the generated _pb/
# packages left out: the front and the hook need the standard library only), precompiled by $PYTHON, directories
# 0755 and files 0644 (the front's launcher hooks/criu_front.py 0755), root:root. PREFIX/install-users lists what runs from it (a route's path/criu, a hook
# launcher); release_code deletes PREFIX when none of them still does. A PREFIX that holds .packaged is the system
# package's tree (packaging/build.sh): install_code uses it as it is (checked root-owned), release_code keeps it.

CODE_USERS=install-users
# a PREFIX holding this file is a system package's tree (packaging/build.sh): used as it is, never copied or deleted
PACKAGED=.packaged

# check_root_path PATH WHAT: refuse a PATH the front would not trust (a user other than root could change it): the
# front's own rule, nri_plugin/host/paths.py run from the checkout, so the two cannot disagree. Every existing
# directory above PATH, link and target side, must be root's and not group/world-writable; a sticky
# world-writable one such as /tmp is refused too.
check_root_path() {
    local why
    why=$("$PYTHON" -S -E "$repo/nri_plugin/host/paths.py" "$1") && return 0
    die "$2 $1 would be changeable by others: ${why:-$PYTHON could not check it} (or choose another place)"
}

# mkdir_root DIR...: create missing directories root:root 0755 (existing ones, checked by check_root_path, are left
# as they are: `install -d` would chmod them)
mkdir_root() {
    local d
    for d; do [ -d "$d" ] || install -d -m 0755 -o root -g root "$d"; done
}

# install_code PREFIX USER: (re)install the copy under PREFIX and record USER (an absolute path that runs it).
install_code() {
    local prefix=$1 user=$2 parent stage f
    case "$prefix" in /*) ;; *) die "--prefix $prefix must be an absolute path" ;; esac
    prefix=$(readlink -m -- "$prefix")
    [ "$prefix" != / ] || die "--prefix / is not a place for gpucr's code"
    if [ -f "$prefix/$PACKAGED" ]; then
        check_root_path "$prefix/hooks/criu_front.py" "--prefix"
        return 0
    fi
    case "$prefix/" in "$repo"/*) die "--prefix $prefix is inside the checkout $repo: choose a root-owned place (default /usr/lib/gpucr)" ;; esac
    check_root_path "$prefix" "--prefix"
    if [ -e "$prefix" ] && [ ! -f "$prefix/$CODE_USERS" ]; then
        die "$prefix exists and was not made by install/front.sh or install/hook.sh (no $prefix/$CODE_USERS): choose another --prefix"
    fi
    parent=$(dirname -- "$prefix")
    mkdir_root "$parent"
    stage=$(mktemp -d "$parent/.gpucr-code.XXXXXX")
    (cd "$repo" && find nri_plugin hooks -name '*.py' -not -path '*/_pb/*' -not -path '*/__pycache__/*' -print0) |
        while IFS= read -r -d '' f; do
            install -D -m 0644 -o root -g root "$repo/$f" "$stage/$f"
        done
    [ -f "$stage/hooks/criu_front.py" ] && [ -f "$stage/hooks/oci_hook.py" ] && [ -f "$stage/nri_plugin/__init__.py" ] \
        || { rm -rf "$stage"; die "$repo has no nri_plugin/ and hooks/ to install: run from a gpucr checkout"; }
    "$PYTHON" -S -E -m compileall -q -s "$stage" -p "$prefix" "$stage" >/dev/null \
        || { rm -rf "$stage"; die "$PYTHON could not compile gpucr's code (Python >= 3.11 needed there)"; }
    if [ -f "$prefix/$CODE_USERS" ]; then cp "$prefix/$CODE_USERS" "$stage/$CODE_USERS"; else : > "$stage/$CODE_USERS"; fi
    grep -qxF -- "$user" "$stage/$CODE_USERS" || printf '%s\n' "$user" >> "$stage/$CODE_USERS"
    chown -R root:root "$stage"
    find "$stage" -type d -exec chmod 0755 {} +
    find "$stage" -type f -exec chmod 0644 {} +
    chmod 0755 "$stage/hooks/criu_front.py"  # the front's launcher: runtimes exec it (through the route's link)
    if [ -e "$prefix" ]; then
        mv -T "$prefix" "$stage.old"; mv -T "$stage" "$prefix"; rm -rf "$stage.old"
    else
        mv -T "$stage" "$prefix"
    fi
}

# uses_code PREFIX USER: does USER (a route's path/criu link, a hook launcher) still run the code under PREFIX?
uses_code() {
    [ -e "$2" ] || return 1
    [ "$(readlink -f -- "$2")" = "$1/hooks/criu_front.py" ] || grep -qsF -- "$1/hooks/" "$2"
}

# release_code PREFIX USER: forget USER; delete PREFIX when no recorded user still runs from it.
release_code() {
    local prefix u keep=()
    prefix=$(readlink -m -- "$1")
    [ ! -f "$prefix/$PACKAGED" ] || return 0
    [ -f "$prefix/$CODE_USERS" ] || return 0
    while IFS= read -r u; do
        [ -n "$u" ] && [ "$u" != "$2" ] && uses_code "$prefix" "$u" && keep+=("$u")
    done < "$prefix/$CODE_USERS"
    if [ ${#keep[@]} -eq 0 ]; then
        rm -rf "${prefix:?}"
        say "removed gpucr's code copy $prefix (nothing else used it)"
    else
        printf '%s\n' "${keep[@]}" > "$prefix/$CODE_USERS.tmp"
        chmod 0644 "$prefix/$CODE_USERS.tmp"; mv -f "$prefix/$CODE_USERS.tmp" "$prefix/$CODE_USERS"
        say "kept gpucr's code copy $prefix: still used by ${keep[*]}"
    fi
}
