#!/usr/bin/env bash
# Stop the real node started by node-up.sh and remove its state ($STATMUX_CLUSTER_DIR/node),
# leaving nothing behind on the host: no processes, mounts, network namespaces, iptables rules
# or cgroups. Safe to run when nothing (or half of it) is up.
#
# Only processes this node started are signalled, found three precise ways:
#   - the pid files in node/pids/ (checked against the binary that was started);
#   - the container processes: every pid in the node's cgroups (/<cgroup root>/...);
#   - the rest inside the node (containerd shims, socat children): every process whose mount
#     namespace is the holder's.
# Ending the holder then frees the node's network and mount namespaces, and with them every
# mount, pod network namespace and iptables rule made inside.
# Env: STATMUX_CLUSTER_DIR, STATMUX_NODE_NAME, STATMUX_NODE_CGROUP, STATMUX_KEEP_NODE_LOGS=1
#      (keep node/logs and pod-logs for debugging, in $STATMUX_CLUSTER_DIR/node-logs).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

DIR="$STATMUX_CLUSTER_DIR"
ND="$DIR/node"
NODE="${STATMUX_NODE_NAME:-statmux-node}"
CG="${STATMUX_NODE_CGROUP:-statmux-node}"

if [[ "${STATMUX_NODE_NO_LOCK:-0}" != 1 ]]; then
  mkdir -p "$DIR"
  exec 8>"$DIR.node.lock"
  flock -w 120 8 || die "another node-up.sh/node-down.sh holds $DIR.node.lock"
fi
if [[ ! -d "$ND" ]]; then log "nothing to do: $ND does not exist"; exit 0; fi
[[ -f "$ND/.statmux-node" ]] || die "$ND has no .statmux-node marker; not touching it"

ours() { # ours <name> -> its pid if it still runs the binary that was started
  local f="$ND/pids/$1.pid" pid
  [[ -s "$f" && -s "$ND/pids/$1.exe" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ && -d "/proc/$pid" ]] || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$(cat "$ND/pids/$1.exe")" ]] || return 1
  echo "$pid"
}

wait_gone() { # wait_gone <seconds> <pid...>
  local deadline=$(( $(date +%s) * 10 + $1 * 10 )) p left; shift
  while :; do
    left=0; for p in "$@"; do [[ -d "/proc/$p" ]] && left=1; done
    (( left )) || return 0
    (( $(date +%s) * 10 < deadline )) || return 1
    sleep 0.1
  done
}

stop() { # stop <name...>: SIGTERM, up to 10 s, then SIGKILL
  local c pid pids=()
  for c in "$@"; do
    pid="$(ours "$c")" || continue
    log "stopping $c (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid")
  done
  (( ${#pids[@]} )) || return 0
  wait_gone 10 "${pids[@]}" && return 0
  for pid in "${pids[@]}"; do [[ -d "/proc/$pid" ]] && kill -KILL "$pid" 2>/dev/null || true; done
  wait_gone 5 "${pids[@]}" || log "WARNING: pids ${pids[*]} survived SIGKILL"
}

node_cgroup_pids() { # every pid in the node's cgroups, any hierarchy
  local h
  for h in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do
    [[ -d "$h" ]] || continue
    find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

ns_pids() { # every pid (but the holder) whose mount namespace is the holder's
  local holder="$1" ns p
  ns="$(readlink "/proc/$holder/ns/mnt" 2>/dev/null)" || return 0
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [[ "$p" != "$holder" && "$(readlink "/proc/$p/ns/mnt" 2>/dev/null)" == "$ns" ]] && echo "$p"
  done
}

# 1. The kubelet first, so it restarts nothing; then the node's other daemons.
stop kubelet
stop gpu-stand-in kube-proxy coredns egress-proxy
# 2. Containers: kill every process in the node's cgroups (the pods), then containerd.
for round in 1 2 3; do
  mapfile -t cpids < <(node_cgroup_pids)
  (( ${#cpids[@]} )) || break
  log "killing ${#cpids[@]} container processes in the node's cgroups (round $round)"
  kill -KILL "${cpids[@]}" 2>/dev/null || true
  wait_gone 10 "${cpids[@]}" || true
done
# containerd's root persists in the cache (images only): delete every container and its
# snapshot, so the next node starts with no stale pods.
if ours containerd >/dev/null; then
  ctr_() { timeout 60 /usr/bin/ctr --address "$ND/containerd/containerd.sock" -n k8s.io "$@"; }
  for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$t" >/dev/null 2>&1 || true; done
  mapfile -t cids < <(ctr_ containers ls -q 2>/dev/null)
  if (( ${#cids[@]} )); then
    log "removing ${#cids[@]} containers from the node's containerd"
    ctr_ containers rm "${cids[@]}" >/dev/null 2>&1 || log "WARNING: could not remove all containers"
  fi
fi
stop containerd relay-node relay-host
# 3. Whatever else runs inside the node (containerd shims, socat children), then the holder.
if holder="$(ours holder)"; then
  mapfile -t rest < <(ns_pids "$holder")
  if (( ${#rest[@]} )); then
    log "killing ${#rest[@]} remaining processes in the node's namespaces"
    kill -KILL "${rest[@]}" 2>/dev/null || true
    wait_gone 10 "${rest[@]}" || log "WARNING: some of ${rest[*]} survived"
  fi
  stop holder
fi
# 4. cgroups (bottom-up), host-side leftovers, the Node object, the state dir.
for h in /sys/fs/cgroup/*/"$CG" /sys/fs/cgroup/"$CG"; do
  [[ -d "$h" ]] || continue
  find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null ||
    log "WARNING: could not remove all of $h: $(find "$h" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')"
done
if [[ -f "$ND/.created-host-dirs" ]]; then  # mount points node-up.sh had to create (empty)
  while read -r d; do rmdir "$d" 2>/dev/null || log "WARNING: $d is not empty; left in place"; done \
    < "$ND/.created-host-dirs"
fi
if grep -q " $ND" /proc/self/mountinfo; then
  log "WARNING: mounts under $ND remain in the host: unmounting"
  grep " $ND" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l || true
fi
if [[ -f "$DIR/admin.kubeconfig" && -x "$STATMUX_BIN_DIR/kubectl" ]]; then
  "$STATMUX_BIN_DIR/kubectl" --kubeconfig "$DIR/admin.kubeconfig" delete node "$NODE" \
    --ignore-not-found --wait=false --request-timeout=10s >/dev/null 2>&1 || true
fi
if [[ "${STATMUX_KEEP_NODE_LOGS:-0}" == 1 ]]; then
  rm -rf "$DIR/node-logs"; mkdir -p "$DIR/node-logs"
  cp -a "$ND/logs" "$ND/pod-logs" "$DIR/node-logs/" 2>/dev/null || true
fi
rm -rf "$ND"
log "node $NODE stopped; removed $ND"
