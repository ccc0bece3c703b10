# shellcheck shell=bash
# Shared settings for e2e/cluster/{build,up,down}.sh. Source it; do not run it.
#
# Versions come from the committed tools modules, so go.mod is the single source of truth.

CLUSTER_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_modver() { # _modver <go.mod> <module path>
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == "require") ? $3 : $2; print v; exit }' "$1"
}

KUBE_VERSION="$(_modver "$CLUSTER_HERE/tools/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(_modver "$CLUSTER_HERE/etcd-tools/go.mod" go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(_modver "$CLUSTER_HERE/kwok-tools/go.mod" sigs.k8s.io/kwok)"
HELM_VERSION="$(_modver "$CLUSTER_HERE/helm-tools/go.mod" helm.sh/helm/v3)"
COREDNS_VERSION="$(_modver "$CLUSTER_HERE/coredns-tools/go.mod" github.com/coredns/coredns)"

STATMUX_CACHE="${STATMUX_CACHE:-$HOME/.cache/statmux}"
# All binaries (control plane, etcd, kwok, helm) live in one directory keyed by the k8s version.
STATMUX_BIN_DIR="${STATMUX_BIN_DIR:-$STATMUX_CACHE/k8s-bin/$KUBE_VERSION}"
STATMUX_CLUSTER_DIR="${STATMUX_CLUSTER_DIR:-/tmp/statmux-cluster}"

_t0=$(date +%s)
log() { printf '[%s +%4ss] %s\n' "$(basename "$0" .sh)" "$(( $(date +%s) - _t0 ))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
