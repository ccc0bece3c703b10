#!/usr/bin/env bash
# Start a local Kubernetes control plane on loopback, with fake GPU nodes run by kwok:
#   etcd, kube-apiserver (RBAC), kube-controller-manager, kube-scheduler, kwok.
# State (PKI, etcd data, logs, pid files, kubeconfigs) lives in $STATMUX_CLUSTER_DIR
# (default /tmp/statmux-cluster). Binaries come from build.sh (run here; a no-op when cached).
#
# Idempotent: if the cluster in $STATMUX_CLUSTER_DIR is up and healthy, it only prints the
# exports. A half-dead cluster there is stopped (down.sh) and started afresh.
#
# stdout: only the export lines (so `eval "$(e2e/cluster/up.sh)"` works); progress goes to stderr.
#
# Env: STATMUX_CLUSTER_DIR, STATMUX_CACHE, STATMUX_BIN_DIR, STATMUX_SKIP_BUILD=1,
#      STATMUX_GPU_NODES (4), STATMUX_GPUS_PER_NODE (8),
#      STATMUX_GPU_PRODUCT (NVIDIA-H100-80GB-HBM3), STATMUX_GPU_MEMORY (81559, MiB),
#      STATMUX_KWOK_TAINT=1 (add kwok's conventional kwok.x-k8s.io/node=fake:NoSchedule taint
#      to the nodes; off by default since there are no real nodes and every pod would need a
#      toleration), STATMUX_API_PORT (fixed apiserver port; default: a free one),
#      STATMUX_REAL_NODE=1 (a real node will join: route the apiserver's kubelet connections
#      through node-up.sh's egress proxy, so `kubectl logs/exec` work).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

DIR="$STATMUX_CLUSTER_DIR"
BIN="$STATMUX_BIN_DIR"
KCFG="$DIR/admin.kubeconfig"
NODES="${STATMUX_GPU_NODES:-4}"
GPUS="${STATMUX_GPUS_PER_NODE:-8}"
GPU_PRODUCT="${STATMUX_GPU_PRODUCT:-NVIDIA-H100-80GB-HBM3}"
GPU_MEMORY="${STATMUX_GPU_MEMORY:-81559}"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

kc() { "$BIN/kubectl" --kubeconfig "$KCFG" "$@"; }

print_exports() {
  cat <<EOF
export KUBECONFIG=$KCFG
export PATH=$BIN:\$PATH
EOF
}

pid_alive() { # pid_alive <component>: the pid in its pid file runs the binary we started
  local f="$DIR/pids/$1.pid" pid exe
  [[ -f "$f" && -f "$DIR/pids/$1.exe" ]] || return 1
  pid="$(cat "$f")"; exe="$(cat "$DIR/pids/$1.exe")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]]
}

healthy() {
  [[ -f "$KCFG" && -f "$DIR/.statmux-cluster" ]] || return 1
  local c; for c in "${COMPONENTS[@]}"; do pid_alive "$c" || return 1; done
  kc get --raw /readyz --request-timeout=5s >/dev/null 2>&1
}

# One up.sh at a time per cluster dir.
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock -w 300 9 || die "another up.sh/down.sh holds $DIR.lock"

if [[ -d "$DIR" ]]; then
  if healthy; then
    log "cluster in $DIR is already up and healthy"
    print_exports; exit 0
  fi
  log "stale or unhealthy cluster in $DIR: stopping it and starting afresh"
  STATMUX_DOWN_NO_LOCK=1 "$CLUSTER_HERE/down.sh" >&2
fi

# ---------------------------------------------------------------- binaries
if [[ "${STATMUX_SKIP_BUILD:-0}" != 1 ]]; then
  "$CLUSTER_HERE/build.sh" kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok >/dev/null
fi
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  [[ -x "$BIN/$b" ]] || die "missing $BIN/$b: run e2e/cluster/build.sh"
done
command -v openssl >/dev/null || die "openssl not found"

mkdir -p "$DIR"/{pki,logs,pids,etcd-data,kcm-certs,sched-certs}
chmod 700 "$DIR"
echo "statmux local cluster, k8s $KUBE_VERSION; created $(date -u +%FT%TZ) by up.sh" > "$DIR/.statmux-cluster"

# ---------------------------------------------------------------- ports
free_ports() { # free_ports N: N distinct free TCP ports on 127.0.0.1
  if command -v python3 >/dev/null; then
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    local out=() p
    while (( ${#out[@]} < $1 )); do
      p=$(( 20000 + RANDOM % 30000 ))
      ss -Hltn "sport = :$p" | grep -q . || [[ " ${out[*]} " == *" $p "* ]] || out+=("$p")
    done
    echo "${out[*]}"
  fi
}
read -r ETCD_PORT ETCD_PEER_PORT API_PORT KCM_PORT SCHED_PORT < <(free_ports 5)
API_PORT="${STATMUX_API_PORT:-$API_PORT}"
cat > "$DIR/ports.env" <<EOF
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
API_PORT=$API_PORT
KCM_PORT=$KCM_PORT
SCHED_PORT=$SCHED_PORT
EOF
log "ports: etcd $ETCD_PORT/$ETCD_PEER_PORT apiserver $API_PORT kcm $KCM_PORT scheduler $SCHED_PORT"

# ---------------------------------------------------------------- PKI
PKI="$DIR/pki"
SERVICE_CIDR=10.96.0.0/12
SERVICE_IP=10.96.0.1 # first IP of SERVICE_CIDR: the `kubernetes` Service
log "generating PKI in $PKI"
(
  cd "$PKI"
  exec 2>openssl.log
  # ECDSA P-256 throughout: key generation is instant (RSA-2048 took seconds per key on a
  # busy 2-core machine); apiserver, controller-manager and client-go all accept it.
  EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
  openssl req -x509 "${EC[@]}" -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=statmux-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
  sign() { # sign <name> <subject> <extendedKeyUsage> [subjectAltName]
    openssl req -new "${EC[@]}" -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature"
      echo "extendedKeyUsage=$3"
      [[ -z "${4:-}" ]] || echo "subjectAltName=$4"
    } > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
      -sha256 -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
  }
  sign apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=statmux-admin" clientAuth
  sign kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  sign kube-scheduler "/CN=system:kube-scheduler" clientAuth
  sign kwok "/O=system:masters/CN=kwok" clientAuth
  # The apiserver's client identity towards kubelets (logs, exec, port-forward on a real node).
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  # service-account token signing key pair (ES256)
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out sa.key
  openssl pkey -in sa.key -pubout -out sa.pub
  chmod 600 ./*.key
) || die "openssl failed, see $PKI/openssl.log"

b64() { base64 -w0 < "$1"; }
write_kubeconfig() { # write_kubeconfig <file> <cert name> <user>
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: statmux
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: $3
  user:
    client-certificate-data: $(b64 "$PKI/$2.crt")
    client-key-data: $(b64 "$PKI/$2.key")
contexts:
- name: statmux
  context:
    cluster: statmux
    user: $3
current-context: statmux
EOF
  chmod 600 "$1"
}
write_kubeconfig "$KCFG" admin statmux-admin
write_kubeconfig "$DIR/kube-controller-manager.kubeconfig" kube-controller-manager system:kube-controller-manager
write_kubeconfig "$DIR/kube-scheduler.kubeconfig" kube-scheduler system:kube-scheduler
write_kubeconfig "$DIR/kwok.kubeconfig" kwok kwok

# ---------------------------------------------------------------- processes
start() { # start <component> <args...>: detached (own session), pid file + log in $DIR
  local name="$1"; shift
  local exe; exe="$(readlink -f "$BIN/$name")"
  echo "$exe" > "$DIR/pids/$name.exe"
  # The inner shell writes its own pid, then execs the binary: the pid file is the binary's pid.
  setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$DIR/pids/$name.pid" "$exe" "$@" \
    > "$DIR/logs/$name.log" 2>&1 < /dev/null 9>&- &   # 9>&-: do not inherit the up.sh lock
  local i; for i in $(seq 50); do [[ -s "$DIR/pids/$name.pid" ]] && break; sleep 0.1; done
  log "started $name (pid $(cat "$DIR/pids/$name.pid"), log $DIR/logs/$name.log)"
}

wait_for() { # wait_for <what> <timeout s> <component> <command...>
  local what="$1" timeout="$2" comp="$3"; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! pid_alive "$comp"; then
      tail -n 30 "$DIR/logs/$comp.log" >&2 || true
      die "$comp exited while waiting for $what (log: $DIR/logs/$comp.log)"
    fi
    (( $(date +%s) < deadline )) || { tail -n 30 "$DIR/logs/$comp.log" >&2 || true; die "timed out after ${timeout}s waiting for $what"; }
    sleep 0.5
  done
  log "$what: ok"
}

ETCD_URL="http://127.0.0.1:$ETCD_PORT"
etcd_args=(
  --name=statmux --data-dir="$DIR/etcd-data"
  --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL"
  --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
  --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
  --initial-cluster="statmux=http://127.0.0.1:$ETCD_PEER_PORT"
  --quota-backend-bytes=4294967296
)
ETCD_V="$("$BIN/etcd" --version 2>/dev/null | awk '/etcd Version/ {print $3}')"
case "$ETCD_V" in
  3.4.*) ;;                                    # Debian fallback: no --unsafe-no-fsync
  *) etcd_args+=(--unsafe-no-fsync --log-level=warn) ;;
esac
start etcd "${etcd_args[@]}"
wait_for "etcd $ETCD_V health" 60 etcd curl -fsS "$ETCD_URL/health"

# The apiserver publishes an advertise address in the `kubernetes` Service endpoints; it
# rejects loopback, and without a default route it cannot pick one itself. Nothing dials it
# here (no pods really run), so any non-loopback address will do.
api_args=()
# A real node (node-up.sh) lives in its own network namespace: the apiserver reaches its
# kubelet through the egress selector ("cluster" traffic as HTTP CONNECT over a unix socket,
# served inside the node by statmux-egress-proxy), so nothing changes in the host's network.
if [[ "${STATMUX_REAL_NODE:-0}" == 1 ]]; then
  cat > "$DIR/egress-selector.yaml" <<EOF
apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds: {udsName: $DIR/node/egress.sock}
EOF
  # The node's IP, not its name (which only the node's own DNS knows), as kubeadm does.
  api_args+=(--egress-selector-config-file="$DIR/egress-selector.yaml"
             --kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname)
fi
if ! ip route show default 2>/dev/null | grep -q .; then
  adv="$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -1 || true)"
  api_args+=(--advertise-address="${adv:-10.255.255.254}")
fi
start kube-apiserver "${api_args[@]}" \
  --etcd-servers="$ETCD_URL" \
  --bind-address=127.0.0.1 --secure-port="$API_PORT" \
  --cert-dir="$PKI" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" \
  --service-account-signing-key-file="$PKI/sa.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=RBAC \
  --allow-privileged=true \
  --profiling=false
wait_for "kube-apiserver /readyz (https://127.0.0.1:$API_PORT)" 120 kube-apiserver \
  kc get --raw /readyz --request-timeout=5s

start kube-controller-manager \
  --kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="$DIR/kube-controller-manager.kubeconfig" \
  --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$DIR/kcm-certs" \
  --service-account-private-key-file="$PKI/sa.key" \
  --root-ca-file="$PKI/ca.crt" \
  --use-service-account-credentials=true \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --node-monitor-grace-period=5m \
  --profiling=false

start kube-scheduler \
  --kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --authentication-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="$DIR/kube-scheduler.kubeconfig" \
  --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --cert-dir="$DIR/sched-certs" \
  --profiling=false

start kwok \
  --kubeconfig="$DIR/kwok.kubeconfig" \
  --manage-all-nodes=false \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake

k_insecure_healthz() { curl -fsSk "https://127.0.0.1:$1/healthz"; }
wait_for "kube-controller-manager /healthz" 60 kube-controller-manager k_insecure_healthz "$KCM_PORT"
wait_for "kube-scheduler /healthz" 60 kube-scheduler k_insecure_healthz "$SCHED_PORT"

# ---------------------------------------------------------------- fake GPU nodes
node_yaml() { # node_yaml <name>
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    statmux.dev/fake-gpu-node: "true"
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    beta.kubernetes.io/arch: amd64
    node-role.kubernetes.io/agent: ""
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: $GPU_PRODUCT
    nvidia.com/gpu.memory: "$GPU_MEMORY"
    nvidia.com/gpu.count: "$GPUS"
spec:
EOF
  if [[ "${STATMUX_KWOK_TAINT:-0}" == 1 ]]; then
    cat <<'EOF'
  taints:
  - key: kwok.x-k8s.io/node
    value: fake
    effect: NoSchedule
EOF
  else
    echo "  taints: []"
  fi
  cat <<EOF
status:
  capacity:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    ephemeral-storage: 1Ti
    nvidia.com/gpu: "$GPUS"
  allocatable:
    cpu: "64"
    memory: 512Gi
    pods: "110"
    ephemeral-storage: 1Ti
    nvidia.com/gpu: "$GPUS"
  nodeInfo:
    architecture: amd64
    operatingSystem: linux
    kubeletVersion: fake
    kubeProxyVersion: fake
    containerRuntimeVersion: kwok
EOF
}
log "creating $NODES fake GPU nodes ($GPUS x $GPU_PRODUCT each)"
for i in $(seq 0 $(( NODES - 1 ))); do node_yaml "statmux-gpu-$i"; done > "$DIR/nodes.yaml"
kc apply -f "$DIR/nodes.yaml" >&2
wait_for "nodes Ready" 120 kwok \
  kc wait --for=condition=Ready node -l statmux.dev/fake-gpu-node=true --timeout=5s

# ---------------------------------------------------------------- smoke test
wait_for "default ServiceAccount" 60 kube-controller-manager kc -n default get serviceaccount default
cat > "$DIR/smoke-pod.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: statmux-gpu-smoke
  namespace: default
spec:
  tolerations:
  - key: kwok.x-k8s.io/node
    operator: Exists
    effect: NoSchedule
  containers:
  - name: smoke
    image: statmux.invalid/smoke:0
    resources:
      requests: {nvidia.com/gpu: "2"}
      limits: {nvidia.com/gpu: "2"}
EOF
kc delete -f "$DIR/smoke-pod.yaml" --ignore-not-found --wait=true >/dev/null 2>&1 || true
kc apply -f "$DIR/smoke-pod.yaml" >&2
wait_for "smoke pod with nvidia.com/gpu: 2 Running" 90 kube-scheduler \
  kc -n default wait --for=jsonpath='{.status.phase}'=Running pod/statmux-gpu-smoke --timeout=5s
log "smoke pod on node $(kc -n default get pod statmux-gpu-smoke -o jsonpath='{.spec.nodeName}')"
kc delete -f "$DIR/smoke-pod.yaml" --wait=true --timeout=60s >&2

print_exports > "$DIR/env.sh"
log "cluster up: server $(kc get --raw /version | grep -o '"gitVersion": *"[^"]*"' | cut -d'"' -f4), $NODES nodes x $GPUS nvidia.com/gpu"
log "kubeconfig: $KCFG   (also: source $DIR/env.sh; stop with e2e/cluster/down.sh)"
print_exports
