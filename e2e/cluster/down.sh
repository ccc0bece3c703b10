#!/usr/bin/env bash
# Stop the local cluster started by up.sh and remove its run dir ($STATMUX_CLUSTER_DIR).
# Only processes named in up.sh's pid files are signalled, and only if the pid still runs the
# binary up.sh started (recorded in pids/<name>.exe), so a reused pid is never hit.
# Env: STATMUX_CLUSTER_DIR, STATMUX_KEEP_DIR=1 (stop processes, keep the dir for debugging).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

DIR="$STATMUX_CLUSTER_DIR"
if [[ "${STATMUX_DOWN_NO_LOCK:-0}" != 1 ]]; then
  mkdir -p "$(dirname "$DIR")"
  exec 9>"$DIR.lock"
  flock -w 120 9 || die "another up.sh/down.sh holds $DIR.lock"
fi

if [[ ! -d "$DIR" ]]; then log "nothing to do: $DIR does not exist"; exit 0; fi
[[ -f "$DIR/.statmux-cluster" ]] || die "$DIR has no .statmux-cluster marker; not touching it"

# A real node (node-up.sh) goes first: its kubelet and pods need the apiserver to stop cleanly.
if [[ -d "$DIR/node" ]]; then "$CLUSTER_HERE/node-down.sh" || log "WARNING: node-down.sh failed"; fi

ours() { # ours <component> -> prints pid if it still runs the binary we started
  local f="$DIR/pids/$1.pid" pid exe
  [[ -s "$f" && -s "$DIR/pids/$1.exe" ]] || return 1
  pid="$(cat "$f")"; exe="$(cat "$DIR/pids/$1.exe")"
  [[ "$pid" =~ ^[0-9]+$ && -d "/proc/$pid" ]] || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] || return 1
  echo "$pid"
}

stop() { # stop <component...>: SIGTERM them together, wait up to 15s, then SIGKILL leftovers
  local c pid pids=() names=() i
  for c in "$@"; do
    pid="$(ours "$c")" || continue
    log "stopping $c (pid $pid)"; kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid"); names+=("$c")
  done
  for _ in $(seq 150); do
    local left=0; for pid in ${pids[@]+"${pids[@]}"}; do [[ -d "/proc/$pid" ]] && left=1; done
    (( left )) || return 0; sleep 0.1
  done
  for i in "${!names[@]}"; do
    if ours "${names[$i]}" >/dev/null; then
      log "${names[$i]} did not stop in 15s: SIGKILL"; kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  sleep 0.5
}
# Clients first, then the apiserver, etcd last.
stop kwok kube-scheduler kube-controller-manager
stop kube-apiserver
stop etcd

if [[ "${STATMUX_KEEP_DIR:-0}" == 1 ]]; then
  rm -f "$DIR"/pids/*.pid
  log "stopped; kept $DIR"
else
  rm -rf "$DIR"
  log "stopped; removed $DIR"
fi
