#!/usr/bin/env bash
# Install the Debian packages the real node and the image build need, idempotently:
# containerd, runc, CNI plugins, iptables/conntrack (kube-proxy), socat (the API relay into the
# node's network namespace), buildah + debootstrap (images without Docker or a registry).
# A no-op when everything is present. Needs root (or passwordless sudo) for apt-get.
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

# package -> a file it installs (checked instead of dpkg, so a manual install also counts)
declare -A NEED=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [socat]=/usr/bin/socat
  [buildah]=/usr/bin/buildah
  [debootstrap]=/usr/sbin/debootstrap
  [iproute2]=/usr/sbin/ip
  [util-linux]=/usr/bin/nsenter
  [uidmap]=/usr/bin/newuidmap
)
missing=()
for p in "${!NEED[@]}"; do [[ -e "${NEED[$p]}" ]] || missing+=("$p"); done
if (( ${#missing[@]} == 0 )); then log "node packages present"; exit 0; fi

SUDO=(); [[ $(id -u) == 0 ]] || SUDO=(sudo -n)
log "installing: ${missing[*]}"
apt_install() { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >&2; }
if ! apt_install "${missing[@]}"; then
  "${SUDO[@]}" apt-get update >&2 || die "apt-get update failed"
  apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed"
fi
# The Debian containerd package may try to start a system containerd; the node runs its own
# with a private config, so a system one is neither needed nor touched.
for p in "${missing[@]}"; do [[ -e "${NEED[$p]}" ]] || die "$p installed but ${NEED[$p]} is missing"; done
log "installed: ${missing[*]}"
