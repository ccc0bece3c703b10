#!/usr/bin/env bash
# Check a running local cluster (from up.sh) does what the operator e2e relies on:
#   fake GPU nodes with nvidia.com/gpu capacity and GFD labels, a GPU pod goes Running,
#   RBAC answers `auth can-i`, namespace deletion finishes, ownerReference GC deletes
#   dependents (background and foreground).
# Usage: e2e/cluster/check.sh   (uses $STATMUX_CLUSTER_DIR/admin.kubeconfig)
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"
KCFG="$STATMUX_CLUSTER_DIR/admin.kubeconfig"
[[ -f "$KCFG" ]] || die "no $KCFG: run e2e/cluster/up.sh first"
kc() { "$STATMUX_BIN_DIR/kubectl" --kubeconfig "$KCFG" "$@"; }
NS="statmux-check-$$"
fail() { log "FAIL: $*"; kc delete ns "$NS" --wait=false >/dev/null 2>&1 || true; exit 1; }
until_ok() { # until_ok <timeout s> <command...>
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do (( $(date +%s) < deadline )) || return 1; sleep 0.5; done
}

log "server version: $(kc get --raw /version | grep -o '"gitVersion": *"[^"]*"' | cut -d'"' -f4)"
kc get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count >&2
n=$(kc get nodes -l nvidia.com/gpu.product --no-headers | grep -c ' Ready ' || true)
(( n >= 1 )) || fail "no Ready GPU nodes"
gpus=$(kc get nodes -o jsonpath='{range .items[*]}{.status.allocatable.nvidia\.com/gpu}{"\n"}{end}' | awk '{s += $1} END {print s}')
log "Ready GPU nodes: $n, allocatable nvidia.com/gpu total: $gpus"

kc create ns "$NS" >/dev/null
until_ok 30 kc -n "$NS" get sa default || fail "no default ServiceAccount in $NS"

# GPU pod
kc -n "$NS" apply -f - >/dev/null <<'EOF'
apiVersion: v1
kind: Pod
metadata: {name: gpu-pod}
spec:
  tolerations: [{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}]
  containers:
  - name: c
    image: statmux.invalid/x:0
    resources: {requests: {nvidia.com/gpu: "2"}, limits: {nvidia.com/gpu: "2"}}
EOF
kc -n "$NS" wait --for=jsonpath='{.status.phase}'=Running pod/gpu-pod --timeout=60s >/dev/null ||
  fail "GPU pod not Running"
log "GPU pod Running on $(kc -n "$NS" get pod gpu-pod -o jsonpath='{.spec.nodeName}')"

# RBAC
[[ "$(kc auth can-i '*' '*')" == yes ]] || fail "admin cannot do everything"
[[ "$(kc auth can-i list pods --as=system:serviceaccount:$NS:default 2>/dev/null || true)" == no ]] ||
  fail "default SA should not list pods"
kc -n "$NS" create role pod-reader --verb=get,list,watch --resource=pods >/dev/null
kc -n "$NS" create rolebinding pod-reader --role=pod-reader --serviceaccount="$NS:default" >/dev/null
until_ok 10 test "$(kc -n "$NS" auth can-i list pods --as=system:serviceaccount:$NS:default)" == yes ||
  fail "RoleBinding not honoured"
[[ "$(kc -n "$NS" auth can-i delete pods --as=system:serviceaccount:$NS:default 2>/dev/null || true)" == no ]] ||
  fail "SA can delete pods"
log "RBAC: auth can-i ok (admin yes; SA list pods no -> yes after RoleBinding; delete no)"
# A token kubeconfig for the SA (as the operator will run): whoami + allowed/denied calls.
tok="$(kc -n "$NS" create token default --duration=10m)"
SAK="$(mktemp)"; trap 'rm -f "$SAK"' EXIT
server="$(kc config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(kc config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
cat > "$SAK" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$tok"}}]
contexts: [{name: c, context: {cluster: c, user: sa, namespace: "$NS"}}]
current-context: c
EOF
who="$("$STATMUX_BIN_DIR/kubectl" --kubeconfig "$SAK" auth whoami -o jsonpath='{.status.userInfo.username}')"
[[ "$who" == "system:serviceaccount:$NS:default" ]] || fail "token whoami gave '$who'"
"$STATMUX_BIN_DIR/kubectl" --kubeconfig "$SAK" get pods >/dev/null || fail "SA token cannot list pods"
! "$STATMUX_BIN_DIR/kubectl" --kubeconfig "$SAK" get nodes >/dev/null 2>&1 || fail "SA token can list nodes"
log "SA token kubeconfig: whoami=$who, list pods allowed, list nodes forbidden"

# Garbage collection of ownerReferences
gc_case() { # gc_case <propagation>
  local prop="$1" uid
  kc -n "$NS" create configmap "owner-$prop" --from-literal=a=b >/dev/null
  uid="$(kc -n "$NS" get configmap "owner-$prop" -o jsonpath='{.metadata.uid}')"
  kc -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: child-$prop
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner-$prop, uid: $uid, blockOwnerDeletion: true}
data: {c: d}
EOF
  kc -n "$NS" delete configmap "owner-$prop" --cascade="$prop" --wait=true --timeout=60s >/dev/null
  until_ok 60 bash -c "! '$STATMUX_BIN_DIR/kubectl' --kubeconfig '$KCFG' -n '$NS' get configmap child-$prop" ||
    fail "GC ($prop) did not delete the dependent ConfigMap"
  log "GC ($prop): dependent ConfigMap deleted with its owner"
}
gc_case background
gc_case foreground

# Namespace deletion (namespace controller + kwok finishing the pod)
t=$(date +%s)
kc delete ns "$NS" --wait=true --timeout=120s >/dev/null || fail "namespace $NS not deleted in 120s"
log "namespace deletion: ok in $(( $(date +%s) - t ))s"
log "all checks passed"
