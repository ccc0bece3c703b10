#!/usr/bin/env bash
# Build and cache the binaries for the local control plane:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl  (e2e/cluster/tools)
#   etcd                                                              (e2e/cluster/etcd-tools)
#   kwok                                                              (e2e/cluster/kwok-tools)
#   helm                                                              (e2e/cluster/helm-tools)
# and, only when asked for (`build.sh node` or by name), the real node's binaries:
#   kubelet, kube-proxy, statmux-gpu-stand-in, statmux-egress-proxy, pause (e2e/cluster/node-tools)
#   coredns                                                           (e2e/cluster/coredns-tools)
# into $STATMUX_BIN_DIR (default ${STATMUX_CACHE:-$HOME/.cache/statmux}/k8s-bin/<k8s version>/).
#
# Each binary gets a stamp (version + hash of its tools module's go.mod/go.sum and its own
# package's local *.go + go version);
# a binary whose stamp matches is not rebuilt, so a second run is a no-op.
#
# Env: STATMUX_CACHE, STATMUX_BIN_DIR, STATMUX_BUILD_PARALLEL (go build -p, default 2: each
#      compile of the big k8s packages takes ~1-2 GB RSS), STATMUX_FORCE_REBUILD=1,
#      STATMUX_ETCD_FALLBACK=debian|none (default debian: use/install Debian etcd-server if
#      the etcd build fails).
# Usage: e2e/cluster/build.sh [binary...|node]   (default: everything but the node binaries)
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

command -v go >/dev/null || die "go not found (need Go >= 1.24)"
GO_VERSION="$(go env GOVERSION)"
case "$GO_VERSION" in
  go1.2[4-9]*|go1.[3-9][0-9]*) ;;
  *) die "need Go >= 1.24, have $GO_VERSION" ;;
esac

export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false -mod=readonly -p=${STATMUX_BUILD_PARALLEL:-2}"
mkdir -p "$STATMUX_BIN_DIR/.stamps"

# Version ldflags, keys as in upstream hack/lib/version.sh.
kube_ldflags() {
  local major minor build_date p out="-s -w"
  major="${KUBE_VERSION#v}"; major="${major%%.*}"
  minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
  build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    out+=" -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  printf '%s' "$out"
}

helm_ldflags() {
  # As helm's Makefile: version, and the k8s version helm assumes offline (client-go minor).
  local cg minor
  cg="$(_modver "$CLUSTER_HERE/helm-tools/go.mod" k8s.io/client-go)"   # v0.32.2
  minor="${cg#v0.}"; minor="${minor%%.*}"
  printf '%s' "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/internal/version.gitTreeState=clean \
-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
}

stamp_for() { # stamp_for <name> <version> <moddir> <package>
  # Only the module files and the local Go sources of the package itself: editing one small
  # local command (./gpu-plugin) must not relink the kubelet of the same module.
  local src=()
  case "$4" in
    .) mapfile -t src < <(find "$CLUSTER_HERE/$3" -maxdepth 1 -name '*.go' | sort) ;;
    ./*) mapfile -t src < <(find "$CLUSTER_HERE/$3/${4#./}" -name '*.go' | sort) ;;
  esac
  printf '%s %s %s %s\n' "$1" "$2" "$GO_VERSION" \
    "$(cat "$CLUSTER_HERE/$3/go.mod" "$CLUSTER_HERE/$3/go.sum" ${src[@]+"${src[@]}"} | sha256sum | cut -c1-16)"
}

is_cached() { # is_cached <name> <stamp>
  [[ "${STATMUX_FORCE_REBUILD:-0}" != 1 && -x "$STATMUX_BIN_DIR/$1" && -f "$STATMUX_BIN_DIR/.stamps/$1" ]] &&
    [[ "$(cat "$STATMUX_BIN_DIR/.stamps/$1")" == "$2" ]]
}

BUILT=() CACHED=() FAILED=()

# build_one <name> <version> <moddir> <package> <ldflags>
build_one() {
  local name="$1" version="$2" moddir="$3" pkg="$4" ldflags="$5" stamp t rc=0
  stamp="$(stamp_for "$name" "$version" "$moddir" "$pkg")"
  if is_cached "$name" "$stamp"; then CACHED+=("$name"); return 0; fi
  log "building $name $version ($pkg) ..."
  t=$(date +%s)
  ( cd "$CLUSTER_HERE/$moddir" &&
    go build -trimpath -ldflags="$ldflags" -o "$STATMUX_BIN_DIR/.$name.tmp" "$pkg" ) || rc=$?
  if (( rc != 0 )); then
    rm -f "$STATMUX_BIN_DIR/.$name.tmp"
    log "FAILED $name after $(( $(date +%s) - t ))s (rc=$rc)"
    return 1
  fi
  mv -f "$STATMUX_BIN_DIR/.$name.tmp" "$STATMUX_BIN_DIR/$name"
  echo "$stamp" > "$STATMUX_BIN_DIR/.stamps/$name"
  log "built $name in $(( $(date +%s) - t ))s"
  BUILT+=("$name")
}

etcd_fallback() {
  [[ "${STATMUX_ETCD_FALLBACK:-debian}" == debian ]] || return 1
  if [[ ! -x /usr/bin/etcd ]]; then
    log "etcd build failed; installing Debian etcd-server (3.4.x) as a fallback"
    if [[ $(id -u) == 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2; } || return 1
    else
      sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server >&2 || return 1
    fi
    # The package may start a system etcd on 2379; we run our own on free ports anyway.
  fi
  ln -sf /usr/bin/etcd "$STATMUX_BIN_DIR/etcd"
  echo "etcd debian $(/usr/bin/etcd --version 2>/dev/null | head -1)" > "$STATMUX_BIN_DIR/.stamps/etcd"
  log "using Debian etcd: $(/usr/bin/etcd --version | head -1)"
}

NODE_BINS=(kubelet kube-proxy statmux-gpu-stand-in statmux-egress-proxy pause coredns)
WANT=()
for a in "$@"; do
  if [[ "$a" == node ]]; then WANT+=("${NODE_BINS[@]}"); else WANT+=("$a"); fi
done
is_node_bin() { local x; for x in "${NODE_BINS[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }
want_any() { # no args given = everything but the node binaries
  if (( ${#WANT[@]} == 0 )); then ! is_node_bin "$1"; return; fi
  local x; for x in "${WANT[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1
}

log "k8s $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION, helm $HELM_VERSION; $GO_VERSION; GOFLAGS=$GOFLAGS"
log "output: $STATMUX_BIN_DIR"

KLD="$(kube_ldflags)"
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  want_any "$c" || continue
  build_one "$c" "$KUBE_VERSION" tools "k8s.io/kubernetes/cmd/$c" "$KLD" || FAILED+=("$c")
done
if want_any etcd; then
  if [[ -f "$STATMUX_BIN_DIR/.stamps/etcd" && "$(cat "$STATMUX_BIN_DIR/.stamps/etcd")" == "etcd debian "* && "${STATMUX_FORCE_REBUILD:-0}" != 1 ]]; then
    CACHED+=(etcd-debian)
  elif ! build_one etcd "$ETCD_VERSION" etcd-tools go.etcd.io/etcd/server/v3 "-s -w"; then
    etcd_fallback || FAILED+=(etcd)
  fi
fi
if want_any kwok; then
  build_one kwok "$KWOK_VERSION" kwok-tools sigs.k8s.io/kwok/cmd/kwok "-s -w" || FAILED+=(kwok)
fi
if want_any helm; then
  build_one helm "$HELM_VERSION" helm-tools helm.sh/helm/v3/cmd/helm "$(helm_ldflags)" || FAILED+=(helm)
fi

for c in kubelet kube-proxy; do
  want_any "$c" || continue
  build_one "$c" "$KUBE_VERSION" node-tools "k8s.io/kubernetes/cmd/$c" "$KLD" || FAILED+=("$c")
done
if want_any statmux-gpu-stand-in; then
  build_one statmux-gpu-stand-in "$KUBE_VERSION" node-tools ./gpu-plugin "-s -w" || FAILED+=(statmux-gpu-stand-in)
fi
if want_any statmux-egress-proxy; then
  build_one statmux-egress-proxy "$KUBE_VERSION" node-tools ./egress-proxy "-s -w" || FAILED+=(statmux-egress-proxy)
fi
if want_any pause; then
  build_one pause "$KUBE_VERSION" node-tools ./pause "-s -w" || FAILED+=(pause)
fi
if want_any coredns; then
  build_one coredns "$COREDNS_VERSION" coredns-tools . "-s -w" || FAILED+=(coredns)
fi

log "cached: ${CACHED[*]:-none}; built: ${BUILT[*]:-none}; total $(( $(date +%s) - _t0 ))s"
if (( ${#FAILED[@]} )); then die "failed: ${FAILED[*]}"; fi
echo "$STATMUX_BIN_DIR"
