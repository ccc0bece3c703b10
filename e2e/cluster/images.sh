#!/usr/bin/env bash
# Build the images the real node runs, without Docker or a registry, into OCI image layouts
# (directories, uncompressed layers) that node-up.sh imports into the node's containerd:
#   pause     statmux.local/pause:1          the sandbox image: one static binary (build.sh)
#   operator  docker.io/statmux/operator:0.1.0   Dockerfile target `operator`
#   runtime   docker.io/statmux/runtime:0.1.0    Dockerfile target `runtime` (torch)
#
# The Dockerfile is built unchanged with `buildah bud --isolation chroot --pull-never`:
#   - its base (build-arg PYTHON_IMAGE) is a local Debian bookworm root filesystem made with
#     debootstrap (python3 + pip), cached in buildah's storage;
#   - HTTPS from inside a build container is not trusted on these machines, so the builds use
#     no network: a wheelhouse of every pinned package (docker/constraints.txt) is downloaded
#     on the host with pip, and a pip.conf (no-index, find-links) plus the wheelhouse are
#     mounted into each RUN with `-v`. The Dockerfile's default path (PyPI) is untouched.
#   - `--layers` keeps every step cached, so a source edit rebuilds only the last layers.
#   - Each image is pushed into its own OCI layout $STATMUX_CACHE/images/<name>.oci (an
#     oci-archive writes a temporary layout and then a tar of it: the GBs twice), and
#     node-up.sh streams the layout into `ctr images import -`, which stores and unpacks only
#     the layers the node's containerd lacks. (buildah 1.28's push still rewrites every blob,
#     even those the layout has: a source edit costs a full push.)
# Buildah runs in a private mount namespace (its overlay mounts never outlive it) with its
# storage in $STATMUX_CACHE/buildah.
#
# Usage: e2e/cluster/images.sh [pause] [operator] [runtime]   (default: all three)
# stdout: the layout paths. Env: STATMUX_CACHE, STATMUX_PY (python for pip download).
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

REPO="$(cd "$CLUSTER_HERE/../.." && pwd)"
OUT="$STATMUX_CACHE/images"
WH="$STATMUX_CACHE/wheelhouse"
BSTORE="$STATMUX_CACHE/buildah"
BASE_IMAGE=localhost/statmux-base:bookworm
PY="${STATMUX_PY:-$REPO/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
mkdir -p "$OUT" "$WH" "$BSTORE"
export STORAGE_DRIVER=overlay
BUILDAH=(buildah --root "$BSTORE/storage" --runroot "$BSTORE/run" --storage-driver overlay)

WANT=("$@"); (( ${#WANT[@]} )) || WANT=(pause operator runtime)
wants() { local x; for x in "${WANT[@]}"; do [[ "$x" == "$1" ]] && return 0; done; return 1; }

"$CLUSTER_HERE/node-deps.sh" >&2

# Everything below runs in a private mount namespace (buildah mounts layers while building).
if [[ "${_STATMUX_IMAGES_UNSHARED:-0}" != 1 ]]; then
  exec env _STATMUX_IMAGES_UNSHARED=1 unshare --mount --propagation private -- "$0" "${WANT[@]}"
fi

image_id() { "${BUILDAH[@]}" images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null | head -1; }

# export_image <image> <name>: push into the OCI layout $OUT/<name>.oci unless it already holds
# this image ID. Uncompressed layers: ctr import then only copies (compressing GBs of torch
# took minutes).
export_image() {
  local img="$1" name="$2" id t dir
  dir="$OUT/$name.oci"
  id="$(image_id "$img")"
  [[ -n "$id" ]] || die "image $img is missing after the build"
  rm -f "$OUT/$name.tar" "$OUT/.$name.tar.tmp"  # the single-archive format of earlier versions
  if [[ -f "$dir/index.json" && -s "$OUT/$name.ref" && "$(cat "$OUT/.$name.id" 2>/dev/null)" == "$id" ]]; then
    log "$name: layout up to date ($dir)"
  else
    t=$(date +%s)
    rm -f "$OUT/.$name.id"
    "${BUILDAH[@]}" push --quiet --disable-compression "$img" "oci:$dir:$img" >/dev/null ||
      die "buildah push $img -> oci:$dir failed"
    # Keep only this image's blobs (earlier builds' layers would be imported again), and write
    # "<ref> <manifest digest>" beside the layout: node-up.sh compares it with what the node's
    # containerd has, without reading GBs.
    python3 - "$dir" "$img" > "$OUT/$name.ref" <<'PY' || die "pruning $dir failed"
import json, os, sys
d, ref = sys.argv[1], sys.argv[2]
blobs = lambda digest: os.path.join(d, "blobs", *digest.split(":", 1))
index = json.load(open(os.path.join(d, "index.json")))
mine = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref]
assert mine, f"{ref} is not in {d}/index.json"
index["manifests"] = mine[-1:]
keep = {mine[-1]["digest"]}
manifest = json.load(open(blobs(mine[-1]["digest"])))
keep |= {manifest["config"]["digest"]} | {layer["digest"] for layer in manifest["layers"]}
with open(os.path.join(d, "index.json.tmp"), "w") as f:
    json.dump(index, f)
os.replace(os.path.join(d, "index.json.tmp"), os.path.join(d, "index.json"))
for algo in os.listdir(os.path.join(d, "blobs")):
    for h in os.listdir(os.path.join(d, "blobs", algo)):
        if f"{algo}:{h}" not in keep:
            os.remove(os.path.join(d, "blobs", algo, h))
print(ref, mine[-1]["digest"])
PY
    echo "$id" > "$OUT/.$name.id"
    log "$name: pushed to the layout in $(( $(date +%s) - t ))s"
  fi
  log "$name: $img $(du -sm "$dir" | cut -f1) MB"
  echo "$dir"
}

# ------------------------------------------------------------------------------ pause
if wants pause; then
  [[ -x "$STATMUX_BIN_DIR/pause" ]] || "$CLUSTER_HERE/build.sh" pause >/dev/null
  # Rebuild only when the binary changed.
  sum="$(sha256sum "$STATMUX_BIN_DIR/pause" | cut -c1-16)"
  if [[ "$("${BUILDAH[@]}" inspect --format '{{index .ImageAnnotations "statmux.pause.sha"}}' statmux.local/pause:1 2>/dev/null)" != "$sum" ]]; then
    c="$("${BUILDAH[@]}" from scratch)"
    "${BUILDAH[@]}" copy "$c" "$STATMUX_BIN_DIR/pause" /pause >/dev/null
    "${BUILDAH[@]}" config --entrypoint '["/pause"]' --annotation "statmux.pause.sha=$sum" "$c"
    "${BUILDAH[@]}" commit --quiet --rm "$c" statmux.local/pause:1 >/dev/null
    log "pause: built"
  fi
  export_image statmux.local/pause:1 pause
fi

wants operator || wants runtime || exit 0

# ------------------------------------------------------------------------------ base image
if [[ -z "$(image_id "$BASE_IMAGE")" ]]; then
  t=$(date +%s)
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  [[ -n "$mirror" ]] || mirror="$(awk '/^deb / && $3 ~ /bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  root="$BSTORE/rootfs.tmp"
  rm -rf "$root"
  log "base: debootstrap bookworm from $mirror (minbase + python3, pip) ..."
  debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" > "$BSTORE/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -3 "$BSTORE/debootstrap.log")"
  # A plain "python image": pip may install into it (python:*-slim has no PEP 668 marker).
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  c="$("${BUILDAH[@]}" from scratch)"
  mnt="$("${BUILDAH[@]}" mount "$c")"
  cp -a "$root"/. "$mnt"/
  "${BUILDAH[@]}" umount "$c" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$c"
  "${BUILDAH[@]}" commit --quiet --rm "$c" "$BASE_IMAGE" >/dev/null
  rm -rf "$root"
  log "base: $BASE_IMAGE built in $(( $(date +%s) - t ))s"
else
  log "base: $BASE_IMAGE cached"
fi

# ------------------------------------------------------------------------------ wheelhouse
# pip download checks every pin against the index even when its wheel is here (minutes):
# skip it while docker/constraints.txt is what the wheelhouse was made from.
t=$(date +%s)
pins="$(sha256sum "$REPO/docker/constraints.txt" | cut -c1-16)"
if [[ "$(cat "$WH/.constraints" 2>/dev/null)" != "$pins" ]]; then
  "$PY" -m pip download --quiet --only-binary=:all: --no-deps -r "$REPO/docker/constraints.txt" -d "$WH" >&2 ||
    die "pip download of docker/constraints.txt into $WH failed"
  echo "$pins" > "$WH/.constraints"
fi
log "wheelhouse: $(ls "$WH" | wc -l) wheels, $(du -sm "$WH" | cut -f1) MB ($(( $(date +%s) - t ))s)"
cat > "$BSTORE/pip.conf" <<'EOF'
[global]
no-index = true
find-links = /wheelhouse
EOF

# ------------------------------------------------------------------------------ targets
# What the wheel is built from (the Dockerfile's builder COPYs): see STATMUX_SOURCE_ID there.
SOURCE_ID="$(cd "$REPO" && find pyproject.toml README.md statmux placement runtime operator \
  -name __pycache__ -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)"
for target in operator runtime; do
  wants "$target" || continue
  img="docker.io/statmux/$target:0.1.0"
  t=$(date +%s)
  log "$target: buildah bud --target $target ..."
  "${BUILDAH[@]}" bud --isolation chroot --pull-never --quiet --layers \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "STATMUX_SOURCE_ID=$SOURCE_ID" \
    -v "$WH:/wheelhouse:ro" -v "$BSTORE/pip.conf:/etc/pip.conf:ro" \
    --target "$target" -t "$img" -f "$REPO/Dockerfile" "$REPO" > "$BSTORE/bud-$target.log" 2>&1 ||
    die "buildah bud --target $target failed: $(tail -5 "$BSTORE/bud-$target.log")"
  log "$target: built in $(( $(date +%s) - t ))s"
  export_image "$img" "$target"
done
