#!/bin/sh
# Removes weir from a node: its conflist (first, so the runtime stops
# choosing weir for new pods), the datapath (`weir-node uninstall`: pins, pod
# links, node routes, the masquerade rule, node.json), then the `weir`
# binary. With --purge it also deletes weir's state and log directories.
# Other files in the CNI directories are never touched. Running it again
# is harmless.
#
# Pods still attached to weir lose their network: drain the node first.
#
# Environment (defaults in brackets):
#   WEIR_HOST_ROOT      prefix of the node's root filesystem [empty]
#   CNI_BIN_DIR         [$WEIR_HOST_ROOT/opt/cni/bin]
#   CNI_CONF_DIR        [$WEIR_HOST_ROOT/etc/cni/net.d]
#   WEIR_CONFLIST_NAME  [05-weir.conflist]
#   WEIR_NODE           the weir-node binary [weir-node, from PATH]
#   WEIR_SKIP_DATAPATH  set to 1 to leave the datapath alone (files only)

set -eu

host_root=${WEIR_HOST_ROOT:-}
bin_dir=${CNI_BIN_DIR:-$host_root/opt/cni/bin}
conf_dir=${CNI_CONF_DIR:-$host_root/etc/cni/net.d}
conf_name=${WEIR_CONFLIST_NAME:-05-weir.conflist}
weir_node=${WEIR_NODE:-weir-node}
skip_datapath=${WEIR_SKIP_DATAPATH:-0}

purge=0
for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -h | --help)
            sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            printf 'weir-uninstall: unknown argument %s (use --purge or --help)\n' "$arg" >&2
            exit 2
            ;;
    esac
done

log() {
    printf 'weir-uninstall: %s\n' "$*" >&2
}

case $conf_name in
    */* | .* | '')
        log "error: WEIR_CONFLIST_NAME must be a plain file name, not '$conf_name'"
        exit 1
        ;;
esac

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        log "removed $1"
    fi
}

remove "$conf_dir/$conf_name"
# Temporary files an interrupted install may have left behind.
for f in "$conf_dir/.$conf_name".weir-tmp.* "$bin_dir"/.weir.weir-tmp.*; do
    remove "$f"
done

if [ "$skip_datapath" != 1 ]; then
    # weir-node's own defaults are the host's paths; under a prefix, point
    # it at the prefixed ones.
    set -- uninstall
    if [ -n "$host_root" ]; then
        set -- --pin-root "$host_root/sys/fs/bpf/weir" \
            --node-json "$host_root/run/weir/node.json" \
            --endpoints-dir "$host_root/run/weir/endpoints" "$@"
    fi
    log "running $weir_node $*"
    "$weir_node" "$@"
fi

remove "$bin_dir/weir"

if [ "$purge" = 1 ]; then
    for d in "$host_root/var/lib/weir" "$host_root/run/weir" "$host_root/var/log/weir"; do
        if [ -d "$d" ]; then
            rm -rf "$d"
            log "removed $d"
        fi
    done
fi
log "weir is uninstalled from this node"
