#!/usr/bin/env bash
# Add a REAL node to the local cluster started by up.sh: containerd + runc, a kubelet
# registered with the cluster's apiserver, kube-proxy (iptables mode), CoreDNS for the cluster
# domain, and a GPU stand-in device plugin that advertises nvidia.com/gpu. The kwok nodes stay.
#
# Isolation: the whole node lives in its own network AND mount namespace, held by one
# "holder" process (pids/holder.pid). Nothing is changed in the host's network namespace (no
# interfaces, routes or iptables rules): kube-proxy's and the CNI bridge's rules, the pod
# network namespaces, every overlay/tmpfs mount of containerd and the kubelet, /run and the CNI
# cache all stay inside, and disappear when node-down.sh ends the namespace. The apiserver
# (127.0.0.1 on the host) is reached through a relay: socat on a unix socket in the host,
# socat on <port> inside the node. The kubelet's cgroups live under /<cgroup root> (default
# statmux-node) in every cgroup hierarchy; node-down.sh removes them.
#
# Network inside the node:
#   10.250.0.10/32 on statmux0 (a veth whose peer stays inside): the node IP; CoreDNS :53.
#   <advertise IP>:<api port> (the `kubernetes` Service endpoint): the apiserver relay, so
#     pods reach the API through the Service IP 10.96.0.1 as on any cluster.
#   cni0 bridge, pods in 10.244.0.0/24 (host-local IPAM).
#
# stdout: export lines (NODE_NETNS_PID, ...); progress on stderr. On failure it names the step
# and the cause, and stops what it started (node-down.sh).
#
# Env: STATMUX_CLUSTER_DIR (the cluster; must be up), STATMUX_NODE_NAME (statmux-node),
#      STATMUX_NODE_GPUS (8), STATMUX_NODE_CGROUP (statmux-node), STATMUX_SKIP_BUILD=1,
#      STATMUX_NODE_IMAGES (OCI layouts to import; default: every *.oci in
#      $STATMUX_CACHE/images, see images.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

DIR="$STATMUX_CLUSTER_DIR"
ND="$DIR/node"
BIN="$STATMUX_BIN_DIR"
KCFG="$DIR/admin.kubeconfig"
NODE="${STATMUX_NODE_NAME:-statmux-node}"
NODE_GPUS="${STATMUX_NODE_GPUS:-8}"
CG="${STATMUX_NODE_CGROUP:-statmux-node}"
NODE_IP=10.250.0.10
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
# What the node tells the runtime about its stand-in GPUs (statmux/contract.py: ENV_DEVICE).
DEVICE_ENV="STATMUX_DEVICE=cpu"
GPU_PRODUCT="${STATMUX_GPU_PRODUCT:-NVIDIA-H100-80GB-HBM3}"

kc() { "$BIN/kubectl" --kubeconfig "$KCFG" "$@"; }

STEP="start"
step() { STEP="$1"; log "== $1"; }
fail() { log "ERROR in step '$STEP': $*"; exit 1; }
on_exit() {
  local rc=$?
  if (( rc != 0 )); then
    log "node setup failed in step '$STEP' (rc=$rc); stopping what was started"
    STATMUX_NODE_NO_LOCK=1 "$CLUSTER_HERE/node-down.sh" >&2 || true
  fi
}

# Inside the node: `in_node cmd...` (network + mount namespace of the holder).
in_node() { nsenter -t "$(cat "$ND/pids/holder.pid")" --net --mount -- "$@"; }

pid_ok() { # pid_ok <name>: its pid file names a live process running the recorded binary
  local f="$ND/pids/$1.pid" pid
  [[ -s "$f" && -s "$ND/pids/$1.exe" ]] || return 1
  pid="$(cat "$f")"
  [[ -d "/proc/$pid" && "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(cat "$ND/pids/$1.exe")" ]]
}

# start <name> host|node <binary> <args...>: detached, pid file = the binary's own pid.
start() {
  local name="$1" where="$2" exe; exe="$(readlink -f "$3")"; shift 3
  echo "$exe" > "$ND/pids/$name.exe"
  local pre=()
  [[ "$where" == node ]] && pre=(nsenter -t "$(cat "$ND/pids/holder.pid")" --net --mount --)
  # nsenter execs in place (no --fork), so the recorded $$ becomes the binary's pid.
  setsid bash -c 'echo $$ > "$1"; shift; exec "$@"' _ "$ND/pids/$name.pid" "${pre[@]}" "$exe" "$@" \
    > "$ND/logs/$name.log" 2>&1 < /dev/null 8>&- 9>&- &
  local i; for i in $(seq 50); do [[ -s "$ND/pids/$name.pid" ]] && break; sleep 0.1; done
  log "started $name (pid $(cat "$ND/pids/$name.pid"), log $ND/logs/$name.log)"
}

wait_for() { # wait_for <what> <timeout s> <component|""> <command...>
  local what="$1" timeout="$2" comp="$3"; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if [[ -n "$comp" ]] && ! pid_ok "$comp"; then
      tail -n 30 "$ND/logs/$comp.log" >&2 || true
      fail "$comp exited while waiting for $what (log: $ND/logs/$comp.log)"
    fi
    if (( $(date +%s) >= deadline )); then
      [[ -z "$comp" ]] || tail -n 30 "$ND/logs/$comp.log" >&2 || true
      fail "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.5
  done
  log "$what: ok"
}

SOCK="$ND/containerd/containerd.sock"
ctr_() { in_node /usr/bin/ctr --address "$SOCK" -n k8s.io "$@"; }

# import_images: every OCI layout (images.sh) whose manifest the node's containerd does not
# have yet under that name, streamed as a tar into `ctr images import -` (no archive file is
# written). The containerd root is kept in the cache between node runs: the tar carries only
# the blobs containerd lacks (after a source edit: the wheel's layers, not the 3 GB of torch;
# import then finds the others in its content store), and unpacking skips the layers it has.
import_images() {
  "$CLUSTER_HERE/images.sh" pause >/dev/null || fail "building the pause image failed"
  local a t name digest have
  mapfile -t layouts < <(if [[ -n "${STATMUX_NODE_IMAGES:-}" ]]; then tr ' ' '\n' <<<"$STATMUX_NODE_IMAGES";
                         else ls -d "$STATMUX_CACHE/images"/*.oci 2>/dev/null; fi)
  have="$(ctr_ images ls 2>/dev/null | awk 'NR > 1 {print $1, $3}')"
  for a in "${layouts[@]}"; do
    [[ -n "$a" ]] || continue
    [[ -f "$a/index.json" ]] || fail "$a is not an OCI layout (run e2e/cluster/images.sh)"
    read -r name digest < "${a%.oci}.ref" 2>/dev/null || name="?" digest="?"
    if grep -qxF "$name $digest" <<<"$have"; then
      log "image $name: already in the node ($(basename "$a"))"; continue
    fi
    t=$(date +%s)
    local blobs=() b have_blobs
    have_blobs="$(ctr_ content ls -q 2>/dev/null || true)"
    for b in "$a"/blobs/sha256/*; do
      grep -qxF "sha256:${b##*/}" <<<"$have_blobs" || blobs+=("blobs/sha256/${b##*/}")
    done
    tar -C "$a" -cf - oci-layout index.json ${blobs[@]+"${blobs[@]}"} | ctr_ images import - >&2 ||
      fail "ctr images import of $a failed"
    log "imported $(basename "$a") ($name, ${#blobs[@]} new blobs) in $(( $(date +%s) - t ))s"
  done
}

# ------------------------------------------------------------------------------ preflight
step "preflight: the cluster"
[[ -f "$DIR/.statmux-cluster" && -f "$KCFG" ]] || fail "no cluster in $DIR: run e2e/cluster/up.sh first"
exec 8>"$DIR.node.lock"
flock -w 300 8 || fail "another node-up.sh/node-down.sh holds $DIR.node.lock"
kc get --raw /readyz --request-timeout=5s >/dev/null 2>&1 || fail "the apiserver of $DIR is not ready"
if [[ -f "$ND/.statmux-node" ]] && pid_ok holder && pid_ok kubelet && pid_ok containerd &&
   kc get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -qx True; then
  log "node $NODE is already up"
  import_images
  echo "export STATMUX_NODE_PID=$(cat "$ND/pids/holder.pid")"
  exit 0
fi
if [[ -d "$ND" ]]; then
  log "stale node state in $ND: stopping it first"
  STATMUX_NODE_NO_LOCK=1 "$CLUSTER_HERE/node-down.sh" >&2
fi

step "preflight: packages"
"$CLUSTER_HERE/node-deps.sh" || fail "installing the node's Debian packages failed"
step "preflight: binaries"
if [[ "${STATMUX_SKIP_BUILD:-0}" != 1 ]]; then
  "$CLUSTER_HERE/build.sh" node kubectl >/dev/null || fail "building the node binaries failed (see above)"
fi
for b in kubelet kube-proxy coredns statmux-gpu-stand-in statmux-egress-proxy pause kubectl; do
  [[ -x "$BIN/$b" ]] || fail "missing $BIN/$b: run e2e/cluster/build.sh node"
done
step "preflight: kernel features"
[[ $(id -u) == 0 ]] || fail "the node needs root (namespaces, mounts, cgroups)"
grep -qw overlay /proc/filesystems || fail "the kernel has no overlay filesystem (containerd's overlayfs snapshotter)"
for c in cpu cpuacct cpuset memory pids; do
  [[ -d "/sys/fs/cgroup/$c" || -f /sys/fs/cgroup/cgroup.controllers ]] ||
    fail "cgroup controller '$c' is not mounted under /sys/fs/cgroup"
done

trap on_exit EXIT
mkdir -p "$ND"/{pids,logs,pki,containerd,cni/net.d,cni/ipam,cni/cache,kubelet,pod-logs,sysctl}
echo "statmux real node $NODE; created $(date -u +%FT%TZ) by node-up.sh" > "$ND/.statmux-node"
# shellcheck disable=SC1091
source "$DIR/ports.env"

# ------------------------------------------------------------------------------ namespaces
step "node namespaces (network + mount)"
# The kubelet sets these host-wide sysctls unless they already have its values; inside the
# node's mount namespace, files with those values are bound over them, so the host's stay.
mkdir -p "$ND/sysctl/vm" "$ND/sysctl/kernel/keys"
for kv in vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1 \
          kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000; do
  echo "${kv#*=}" > "$ND/sysctl/${kv%%=*}"
done
# The node's own resolver (for clients run inside it, e.g. the e2e test's) is its CoreDNS.
echo "nameserver $NODE_IP" > "$ND/resolv.conf"
# Fixed host paths that the node's programs use whatever their flags say: the CNI plugins'
# cache (/var/lib/cni) and the kubelet's device-plugin socket directory
# (/var/lib/kubelet/device-plugins, a constant of the device-plugin API). Inside the node's
# mount namespace the node's own directories are bound over them; a bind mount needs the
# directory, so a missing one is created and node-down.sh removes it again.
for d in /var/lib/cni /var/lib/kubelet; do
  if [[ ! -d "$d" ]]; then mkdir -p "$d"; echo "$d" >> "$ND/.created-host-dirs"; fi
done
cat > "$ND/holder.sh" <<'EOF'
# Runs as the namespace holder (pid written first): private /run, sysctl stand-ins, network.
set -e
echo $$ > "$1"
ND="$2"; NODE_IP="$3"; ADV_IP="$4"
mount -t tmpfs -o mode=755 statmux-node-run /run
mount --bind "$ND/cni/cache" /var/lib/cni
mount --bind "$ND/kubelet" /var/lib/kubelet
mount --bind "$ND/resolv.conf" /etc/resolv.conf
for f in vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops \
         kernel/keys/root_maxkeys kernel/keys/root_maxbytes; do
  mount --bind "$ND/sysctl/$f" "/proc/sys/$f"
done
ip link set lo up
ip link add statmux0 type veth peer name statmux1
ip link set statmux1 up
ip link set statmux0 up
ip addr add "$NODE_IP/32" dev statmux0
[ "$ADV_IP" = "$NODE_IP" ] || ip addr add "$ADV_IP/32" dev statmux0
ip route add default dev statmux0
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true
touch "$ND/.holder-ready"
exec sleep infinity
EOF
# The apiserver's advertised endpoint (the `kubernetes` Service): pods reach it through the
# Service IP, kube-proxy DNATs to ADV_IP:API_PORT, and the relay inside the node answers there.
ADV_IP="$(kc get endpoints kubernetes -n default -o jsonpath='{.subsets[0].addresses[0].ip}')"
ADV_PORT="$(kc get endpoints kubernetes -n default -o jsonpath='{.subsets[0].ports[0].port}')"
[[ -n "$ADV_IP" && "$ADV_PORT" == "$API_PORT" ]] ||
  fail "unexpected kubernetes endpoints: '$ADV_IP:$ADV_PORT' (apiserver port $API_PORT)"
echo "$(readlink -f /usr/bin/sleep)" > "$ND/pids/holder.exe"
setsid unshare --net --mount --propagation slave bash "$ND/holder.sh" "$ND/pids/holder.pid" "$ND" \
  "$NODE_IP" "$ADV_IP" > "$ND/logs/holder.log" 2>&1 < /dev/null 8>&- 9>&- &
wait_for "node namespaces" 20 "" test -f "$ND/.holder-ready"
holder_ok() { pid_ok holder; }   # (bash until it execs sleep)
wait_for "namespace holder" 10 "" holder_ok || { cat "$ND/logs/holder.log" >&2; fail "the namespace holder exited"; }
in_node iptables -t nat -S >/dev/null 2>&1 || fail "iptables (nat table) does not work in the node's network namespace: $(in_node iptables -t nat -S 2>&1 | tail -1)"

# ------------------------------------------------------------------------------ API relay
step "apiserver relay (unix socket; no host network changes)"
start relay-host host /usr/bin/socat "UNIX-LISTEN:$ND/api.sock,fork,unlink-early,mode=600" "TCP:127.0.0.1:$API_PORT"
wait_for "relay socket" 10 relay-host test -S "$ND/api.sock"
start relay-node node /usr/bin/socat "TCP-LISTEN:$API_PORT,fork,reuseaddr" "UNIX-CONNECT:$ND/api.sock"
wait_for "apiserver through the relay" 20 relay-node \
  in_node curl -fsSk "https://127.0.0.1:$API_PORT/readyz" --cacert "$DIR/pki/ca.crt" -o /dev/null
# (readyz is readable anonymously by default; the TLS handshake alone proves the path.)

# ------------------------------------------------------------------------------ PKI, RBAC
step "node credentials (client certificates signed by the cluster CA) and RBAC"
(
  cd "$ND/pki"
  exec 2>openssl.log
  EC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
  sign() { # sign <name> <subject>
    openssl req -new "${EC[@]}" -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$DIR/pki/ca.crt" -CAkey "$DIR/pki/ca.key" -CAcreateserial \
      -CAserial "$ND/pki/ca.srl" -days 825 -sha256 -extfile "$1.ext" -out "$1.crt"
    rm -f "$1.csr" "$1.ext"
  }
  sign kubelet "/O=system:nodes/CN=system:node:$NODE"
  sign kube-proxy "/CN=system:kube-proxy"
  sign coredns "/CN=system:statmux-coredns"
  chmod 600 ./*.key
) || fail "openssl failed, see $ND/pki/openssl.log"
b64() { base64 -w0 < "$1"; }
for who in kubelet kube-proxy coredns; do
  cat > "$ND/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: statmux
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$DIR/pki/ca.crt")
users:
- name: $who
  user:
    client-certificate-data: $(b64 "$ND/pki/$who.crt")
    client-key-data: $(b64 "$ND/pki/$who.key")
contexts:
- name: statmux
  context: {cluster: statmux, user: $who}
current-context: statmux
EOF
  chmod 600 "$ND/$who.kubeconfig"
done
# The apiserver runs RBAC only (no Node authorizer): bind the built-in system:node role to the
# nodes group (what the Node authorizer would allow, wider). system:node-proxier is bound to
# system:kube-proxy by default. CoreDNS gets the read access its kubernetes plugin needs.
kc apply -f - >&2 <<'EOF' || fail "applying the node RBAC failed"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: statmux-node:system:node}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:node}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: statmux-node:coredns}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: statmux-node:coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: statmux-node:coredns}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: system:statmux-coredns}
EOF

# ------------------------------------------------------------------------------ containerd
step "containerd"
# Its root (images, snapshots) persists in the cache, one per cluster dir; node-down.sh
# removes every container from it, so only images are carried over.
CROOT="$STATMUX_CACHE/node-containerd/$(basename "$DIR")"
mkdir -p "$CROOT"
cat > "$ND/containerd/config.toml" <<EOF
version = 2
root = "$CROOT"
state = "$ND/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$ND/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "statmux.local/pause:1"
  # The capability set here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ND/cni/net.d"
EOF
cat > "$ND/cni/net.d/10-statmux.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "statmux",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
               "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$ND/cni/ipam"}
    }
  ]
}
EOF
start containerd node /usr/bin/containerd --config "$ND/containerd/config.toml"
wait_for "containerd" 30 containerd ctr_ version

step "images: import into the node's containerd"
import_images
ctr_ images ls -q | grep -qx 'statmux.local/pause:1' || fail "the sandbox image statmux.local/pause:1 is missing after import"

# ------------------------------------------------------------------------------ kubelet
step "kubelet"
# cgroup root of the node in every v1 hierarchy (cpuset needs its cpus/mems filled in).
for h in /sys/fs/cgroup/*/; do
  [[ -d "$h" ]] || continue
  mkdir -p "$h$CG"
  if [[ -f "${h}cpuset.cpus" ]]; then
    cat "${h}cpuset.cpus" > "$h$CG/cpuset.cpus"; cat "${h}cpuset.mems" > "$h$CG/cpuset.mems"
  fi
done
cat > "$ND/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$CG
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $ND/resolv.conf
podLogsDir: $ND/pod-logs
maxPods: 110
serializeImagePulls: false
runtimeRequestTimeout: 10m
# A shared CI disk: evict only when really full; never GC the imported images.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
rotateCertificates: false
registerNode: true
EOF
start kubelet node "$BIN/kubelet" \
  --config="$ND/kubelet.yaml" \
  --kubeconfig="$ND/kubelet.kubeconfig" \
  --root-dir="$ND/kubelet" --cert-dir="$ND/kubelet/pki" \
  --hostname-override="$NODE" --node-ip="$NODE_IP" \
  --node-labels="statmux.dev/real-node=true,nvidia.com/gpu.present=true,nvidia.com/gpu.product=$GPU_PRODUCT,nvidia.com/gpu.count=$NODE_GPUS" \
  --v=1
wait_for "kubelet /healthz" 90 kubelet in_node curl -fsS http://127.0.0.1:10248/healthz
wait_for "node $NODE registered" 60 kubelet kc get node "$NODE"

step "apiserver -> kubelet (kubectl logs/exec)"
# The apiserver (host namespace) dials the kubelet through its egress selector: HTTP CONNECT
# on $ND/egress.sock (up.sh with STATMUX_REAL_NODE=1), served from inside the node.
if [[ -f "$DIR/egress-selector.yaml" ]]; then
  start egress-proxy node "$BIN/statmux-egress-proxy" --socket="$ND/egress.sock"
  wait_for "apiserver -> kubelet /healthz through the egress proxy" 30 egress-proxy \
    kc get --raw "/api/v1/nodes/$NODE/proxy/healthz" --request-timeout=5s
else
  log "the cluster was started without STATMUX_REAL_NODE=1: kubectl logs/exec will not reach this node"
fi

step "GPU stand-in device plugin"
start gpu-stand-in node "$BIN/statmux-gpu-stand-in" --dir="$ND/kubelet/device-plugins" \
  --count="$NODE_GPUS" --env="$DEVICE_ENV"
gpus_ok() { [[ "$(kc get node "$NODE" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}')" == "$NODE_GPUS" ]]; }
wait_for "nvidia.com/gpu: $NODE_GPUS allocatable on $NODE" 60 gpu-stand-in gpus_ok

# ------------------------------------------------------------------------------ kube-proxy
step "kube-proxy (iptables mode)"
cat > "$ND/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $ND/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $CLUSTER_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the global conntrack table size alone (maxPerCore 0), timeouts as they are.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
# Pod -> Service -> pod on the same bridge: masquerade so replies come back through the node.
iptables: {masqueradeAll: true, syncPeriod: 30s, minSyncPeriod: 1s}
EOF
start kube-proxy node "$BIN/kube-proxy" --config="$ND/kube-proxy.yaml" --v=1
proxy_synced() { in_node iptables -t nat -S KUBE-SERVICES | grep -q 'default/kubernetes:https'; }
wait_for "kube-proxy rules for default/kubernetes" 60 kube-proxy proxy_synced

# ------------------------------------------------------------------------------ CoreDNS
step "cluster DNS (CoreDNS on $NODE_IP:53)"
cat > "$ND/Corefile" <<EOF
.:53 {
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $ND/coredns.kubeconfig statmux
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
}
EOF
start coredns node "$BIN/coredns" -conf "$ND/Corefile"
wait_for "CoreDNS ready" 60 coredns in_node curl -fsS http://127.0.0.1:18181/ready
dns_ok() { in_node getent ahostsv4 kubernetes.default.svc.cluster.local 2>/dev/null | grep -q '^10\.96\.0\.1 '; }
wait_for "DNS: kubernetes.default.svc.cluster.local -> 10.96.0.1" 30 coredns dns_ok

# ------------------------------------------------------------------------------ ready
step "node Ready"
wait_for "node $NODE Ready" 120 kubelet \
  kc wait --for=condition=Ready "node/$NODE" --timeout=5s
trap - EXIT
log "node $NODE up: kubelet + containerd + runc, kube-proxy (iptables), CoreDNS, $NODE_GPUS stand-in GPUs"
log "enter its network: nsenter -t \$(cat $ND/pids/holder.pid) --net --mount"
echo "export STATMUX_NODE_PID=$(cat "$ND/pids/holder.pid")"
