# syntax=docker/dockerfile:1.7
# statmux container images, two targets:
#   docker build --target operator -t statmux/operator:0.1.0 .   # slim, no torch
#   docker build --target runtime  -t statmux/runtime:0.1.0 .    # CUDA-capable torch (+ router)
# Base images are pinned to exact version tags; Python packages to docker/constraints.txt.
# Both final images run as the non-root user 65532 (the Helm chart's runAsUser).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------- builder: the statmux wheel
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/constraints.txt
WORKDIR /src
COPY docker/constraints.txt /tmp/constraints.txt
# Only what the wheel is built from, so edits elsewhere keep this layer cached.
COPY pyproject.toml README.md ./
COPY statmux/ statmux/
COPY placement/ placement/
COPY runtime/ runtime/
COPY operator/ operator/
# PIP_CONSTRAINT also pins the isolated build environment's setuptools.
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------- common base of the finals
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # numba caches compiled kernels here; /tmp is the one writable path (an emptyDir in k8s).
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 65532 statmux \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin statmux
COPY docker/constraints.txt /etc/statmux/constraints.txt

# ---------------------------------------------------------------- operator (kopf, no torch)
FROM base AS operator
# Its dependencies (from pyproject.toml) first, in their own layer: kept while pyproject.toml
# is unchanged, so a source edit reinstalls only the statmux wheel below.
COPY pyproject.toml docker/deps.py /tmp/deps/
RUN python /tmp/deps/deps.py /tmp/deps/pyproject.toml operator > /tmp/deps/requirements.txt \
 && python -m pip install --constraint /etc/statmux/constraints.txt -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps
# A hash of the sources when e2e/cluster/images.sh builds (unset with docker build): the wheel's
# layers below are never served from a cache made from other sources.
ARG STATMUX_SOURCE_ID=""
# COPY, not RUN --mount=from=builder: buildah 1.28 mounts an empty directory there when the
# builder stage came from its layer cache. The wheel stays in a ~1 MB layer.
COPY --from=builder /wheels/ /tmp/wheels/
RUN python -m pip install --constraint /etc/statmux/constraints.txt \
      "$(ls /tmp/wheels/statmux-*.whl)[operator]" \
 && rm -rf /tmp/wheels \
 && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
USER 65532:65532
# kopf's liveness endpoint; the chart's livenessProbe polls it.
EXPOSE 8080
ENTRYPOINT ["statmux", "operator"]
CMD ["--liveness=http://0.0.0.0:8080/healthz"]

# ---------------------------------------------------------------- runtime (group pods, router)
FROM base AS runtime
# The NVIDIA container toolkit mounts the driver when these are set; torch from PyPI
# brings the CUDA user-space libraries (nvidia-* wheels) itself.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HUB_OFFLINE=1
# torch (with its CUDA wheels: GBs) in its own layer first, pinned by the constraints: it
# depends on nothing of ours, so editing the sources rebuilds only the small layer below.
RUN python -m pip install --constraint /etc/statmux/constraints.txt torch
# The other dependencies (from pyproject.toml) next, as in the operator target.
COPY pyproject.toml docker/deps.py /tmp/deps/
RUN python /tmp/deps/deps.py /tmp/deps/pyproject.toml runtime > /tmp/deps/requirements.txt \
 && python -m pip install --constraint /etc/statmux/constraints.txt -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps
ARG STATMUX_SOURCE_ID=""
COPY --from=builder /wheels/ /tmp/wheels/
RUN python -m pip install --constraint /etc/statmux/constraints.txt \
      "$(ls /tmp/wheels/statmux-*.whl)[runtime]" \
 && rm -rf /tmp/wheels
USER 65532:65532
EXPOSE 8000 29500
ENTRYPOINT ["statmux"]
CMD ["runtime", "serve", "--plan", "/etc/statmux/plan.json"]
