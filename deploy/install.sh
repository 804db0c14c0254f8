#!/bin/sh
# Installs weir's CNI plugin on a node: the `weir` binary into the CNI
# binary directory and weir's conflist into the CNI config directory.
#
# Every file is replaced atomically: the new content is written to a hidden
# temporary file in the destination directory, flushed to disk, given its
# mode, and renamed over the old file. A runtime that executes the binary or
# reads the config at any moment sees either the old file or the new one,
# never a part of one. A file whose content and mode are already right is
# left alone, so a second run changes nothing. Other files in either
# directory are never touched.
#
# Environment (defaults in brackets):
#   WEIR_HOST_ROOT      prefix of the node's root filesystem [empty]
#   CNI_BIN_DIR         [$WEIR_HOST_ROOT/opt/cni/bin]
#   CNI_CONF_DIR        [$WEIR_HOST_ROOT/etc/cni/net.d]
#   WEIR_CNI_BIN        the binary to install [/usr/local/bin/weir]
#   WEIR_CONFLIST       the conflist to install [/etc/weir/05-weir.conflist]
#   WEIR_CONFLIST_NAME  its name in CNI_CONF_DIR [basename of WEIR_CONFLIST]

set -eu

host_root=${WEIR_HOST_ROOT:-}
bin_dir=${CNI_BIN_DIR:-$host_root/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-$host_root/etc/cni/net.d}
src_bin=${WEIR_CNI_BIN:-/usr/local/bin/weir}
src_conf=${WEIR_CONFLIST:-/etc/weir/05-weir.conflist}
conf_name=${WEIR_CONFLIST_NAME:-$(basename "$src_conf")}

log() {
    printf 'weir-install: %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# The temporary file being written, removed if the script stops early.
pending=
cleanup() {
    if [ -n "$pending" ]; then
        rm -f "$pending"
    fi
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# mode_of FILE: the permission bits of FILE in octal, e.g. 755.
mode_of() {
    stat -c %a "$1"
}

# install_atomic SRC DIR NAME MODE: makes DIR/NAME a copy of SRC with MODE.
install_atomic() {
    src=$1 dir=$2 name=$3 mode=$4
    dst=$dir/$name
    if [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$src" "$dst" \
        && [ "$(mode_of "$dst")" = "$mode" ]; then
        log "$dst is up to date"
        return 0
    fi
    # A leading dot and no .conf/.conflist/.json suffix: a runtime scanning
    # the directory never picks the temporary file up.
    pending=$(mktemp "$dir/.$name.weir-tmp.XXXXXX")
    cat "$src" >"$pending"
    chmod "$mode" "$pending"
    # Flush the content before the rename makes it visible, so a crash never
    # leaves a complete-looking name over an empty file.
    sync "$pending" 2>/dev/null || sync
    mv -f "$pending" "$dst"
    pending=
    # Make the rename itself durable.
    sync "$dir" 2>/dev/null || true
    log "installed $dst"
}

[ -f "$src_bin" ] || die "the CNI binary $src_bin does not exist"
[ -f "$src_conf" ] || die "the conflist $src_conf does not exist"
case $conf_name in
    */* | .* | '') die "WEIR_CONFLIST_NAME must be a plain file name, not '$conf_name'" ;;
    *.conflist) ;;
    *) die "WEIR_CONFLIST_NAME must end in .conflist, not '$conf_name'" ;;
esac

mkdir -p "$bin_dir" "$conf_dir"

# The binary first: once the conflist names weir, the runtime may run it.
install_atomic "$src_bin" "$bin_dir" weir 755
install_atomic "$src_conf" "$conf_dir" "$conf_name" 644

# Runtimes use the configuration whose name sorts first. Say so when another
# one wins; it is not ours to remove.
for f in "$conf_dir"/*.conf "$conf_dir"/*.conflist "$conf_dir"/*.json; do
    [ -e "$f" ] || continue
    other=$(basename "$f")
    [ "$other" = "$conf_name" ] && continue
    first=$(printf '%s\n%s\n' "$other" "$conf_name" | LC_ALL=C sort | head -n 1)
    if [ "$first" = "$other" ]; then
        log "warning: $f sorts before $conf_name; the runtime uses it instead of weir"
    fi
done
