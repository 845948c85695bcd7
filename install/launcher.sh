# shellcheck shell=bash
# The small root-owned files gpucr's install scripts write and later recognise as their own: the OCI hook's launcher
# (install/hook.sh), the NRI plugin's launcher (install/plugin.sh), the CRIU front's route files (install/front.sh).
# A launcher carries its script's MARK in its first two lines. Sourced by those three scripts, which define die.

# write_root FILE MODE: stdin into FILE, root:root with MODE, replaced atomically (FILE.tmp, then a rename)
write_root() { cat > "$1.tmp"; chown root:root "$1.tmp"; chmod "$2" "$1.tmp"; mv -f "$1.tmp" "$1"; }

# is_ours FILE MARK: FILE is a launcher that carries MARK
is_ours() { [ -f "$1" ] && head -n 2 "$1" | grep -qF "$2"; }

# claim FILE MARK SCRIPT OPTION: stop (one line) when FILE exists and is not SCRIPT's launcher
claim() {
    if [ -e "$1" ] && ! is_ours "$1" "$2"; then
        die "$1 exists and was not written by $3: remove it or choose another $4"
    fi
}

# launcher_status FILE MARK SCRIPT DESCRIBE: one line about FILE (DESCRIBE, a command, prints what SCRIPT's launcher
# runs); status 3 when FILE is not SCRIPT's launcher
launcher_status() {
    if is_ours "$1" "$2"; then echo "$1: $("$4")"
    elif [ -e "$1" ]; then echo "$1: exists, not written by $3"; return 3
    else echo "$1: not installed"; return 3; fi
}

# dispatch NAME USAGE ARG...: `SCRIPT install|uninstall|status [options]` runs parse on the options, then
# install_NAME, uninstall_NAME or status_NAME
dispatch() {
    local name=$1 usage=$2 cmd
    shift 2
    [ $# -ge 1 ] || die "usage: $0 $usage"
    cmd=$1; shift
    parse "$@"
    case "$cmd" in
        install|uninstall|status) "${cmd}_$name" ;;
        *) die "unknown command '$cmd' (install|uninstall|status)" ;;
    esac
}
