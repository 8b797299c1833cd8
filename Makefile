# Everyday targets. `make test` is what CI runs (see README).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
HELM = $(shell hack/tools.sh helm)
INSTALL_NAMESPACE ?= msa-system

.PHONY: all build test fmt fmt-check clippy unit crds manifests check-generated lint-chart images images-check run-operator cluster-up cluster-down e2e bench-operator bench-operator-scale bench-node bench-gateway bench-events local demo help

all: build

local: ## Run the whole application on 127.0.0.1 (gateway :8080, SQLite and the event broker's data under ./data); Ctrl-C stops it
	$(CARGO) build -q -p msa-user -p msa-order -p msa-product -p msa-gateway -p msa-local --bins
	MSA_NATS_SERVER="$$(hack/tools.sh nats-server)" target/debug/msa-local up $(LOCAL_ARGS)

demo: ## Drive the shop's flow through the gateway `make local` started
	$(CARGO) build -q -p msa-local --bins
	target/debug/msa-local demo

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

# The steps that need the image tarballs build them first, unless make test runs `images` as a
# step of its own (hack/test-steps.sh sets IMAGES_DEP empty).
IMAGES_DEP ?= images

test: ## Everything CI checks (e2e included), step by step; ends with a table of each step's time
	hack/test-steps.sh "$(MAKE)" fmt-check clippy unit lint-chart check-generated images images-check e2e
	@echo "make test: all checks passed"

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy: ## Lint (warnings are errors)
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Unit, render, mocked-API and route tests (on SQLite and on a loopback PostgreSQL it starts), the gateway's HTTP/1.1 conformance beside nginx, traces into Jaeger
	$(CARGO) build --workspace --bins   # the local-run test starts every component binary
	@command -v nginx >/dev/null || { echo ">> installing Debian's nginx-light (the conformance suite runs it beside the gateway)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light; }
	@command -v promtool >/dev/null || { echo ">> installing Debian's prometheus (promtool lints every component's /metrics)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; }
	hack/tools.sh jaeger >/dev/null   # the trace tests' OTLP receiver (built once, cached)
	hack/tools.sh nats-server >/dev/null   # the event tests' broker (built once, cached)
	# Test databases and logs go under target/ (TMPDIR), not /tmp: nothing is left on the machine.
	rm -rf target/test-tmp && mkdir -p target/test-tmp
	url="$$(hack/postgres.sh up)"; trap 'hack/postgres.sh down' EXIT; \
	  TMPDIR="$(CURDIR)/target/test-tmp" MSA_TEST_POSTGRES_URL="$$url" \
	  MSA_NATS_SERVER="$$(hack/tools.sh nats-server)" $(CARGO) test --workspace

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	$(CARGO) run -q -p msa-operator --bin crdgen > crds/microserviceapps.msa.dev.yaml
	cp crds/microserviceapps.msa.dev.yaml charts/msa-operator/crds/

manifests: ## Render manifests/install.yaml from the chart
	hack/render-install.sh "$(HELM)" > manifests/install.yaml

check-generated: ## Fail when crds/ or manifests/install.yaml are stale
	diff -u manifests/install.yaml <(hack/render-install.sh "$(HELM)") \
	  || { echo "manifests/install.yaml is stale: run 'make manifests' and commit it" >&2; exit 1; }
	@echo "generated files are up to date (crds/ is checked by cargo test)"

lint-chart: ## The chart's checks: helm lint in each shape, values.schema.json refusing wrong values, the Argo CD health check's table in gopher-lua
	hack/chart-checks.sh "$(HELM)"

images: ## Build every container image as a tarball under target/images (no Docker, no registry)
	CARGO="$(CARGO)" hack/images.sh

images-check: $(IMAGES_DEP) ## The image tarballs in a general engine: skopeo inspect, podman load, the shop run under podman (on 127.0.0.1)
	@command -v podman >/dev/null && command -v skopeo >/dev/null || { echo ">> installing Debian's podman and skopeo (the image check loads and runs the tarballs with them)"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman skopeo; }
	hack/podman-check.py target/images

run-operator: ## Run the operator against the current kubeconfig
	$(CARGO) run -p msa-operator -- --log-format text

cluster-up: images ## Start the test cluster: control plane, a real node running the images, kwok; prints its env file
	tests/cluster/cluster.sh up

cluster-down: ## Stop the test cluster and remove everything it left on the machine
	tests/cluster/cluster.sh down

e2e: $(IMAGES_DEP) ## The end-to-end tests: on kwok (operator behaviour), then on the real node (the user's path)
	# --workspace everywhere: the same feature set as `make unit`, so nothing is compiled twice.
	$(CARGO) build --workspace --bins
	@echo ">> e2e 1/2: the operator on a control plane with kwok nodes"
	# The scale harness's quick mode (50 apps at 10/s, figures printed, not asserted) on the same
	# cluster: it fails only when an app never gets Ready, the operator dies, or a restarted one
	# does not catch up.
	MSA_CLUSTER_NODES=kwok tests/cluster/run.sh sh -c '$(CARGO) test --workspace --test e2e -- --ignored --test-threads=4 \
	  && echo ">> e2e 1/2: the scale harness, quick (50 apps)" && target/debug/operator-scale --quick'
	@echo ">> e2e 2/2: the images on the real node: chart, shop, demo through the NodePort"
	tests/cluster/run.sh $(CARGO) test --workspace --test node -- --ignored --nocapture

bench-operator: ## Operator figures on a fresh cluster: apply→Ready, 100 apps, RSS, writes (BENCH_ARGS=--quick: 10 apps)
	$(CARGO) build --release -p msa-operator --bin msa-operator
	MSA_CLUSTER_NODES=kwok MSA_E2E_OPERATOR=target/release/msa-operator tests/cluster/run.sh $(CARGO) run --release -p msa-e2e --bin operator-bench -- $(BENCH_ARGS)

bench-operator-scale: ## The operator at N apps created at 10/s on kwok, a fresh cluster per N (SCALE_APPS="100 300 1000", BENCH_ARGS=--quick)
	$(CARGO) build --release -p msa-operator -p msa-e2e --bin msa-operator --bin operator-scale
	for apps in $(or $(SCALE_APPS),100 300 1000); do \
	  MSA_CLUSTER_NODES=kwok MSA_E2E_OPERATOR=target/release/msa-operator tests/cluster/run.sh target/release/operator-scale --apps "$$apps" $(BENCH_ARGS) || exit 1; \
	done

bench-node: images ## Real-node figures: image sizes, build times, apply→Ready on real pods vs kwok, the demo's time
	$(CARGO) build -q --workspace --bins   # msa-local and node-bench (debug: it times the cluster, not itself)
	tests/cluster/run.sh target/debug/node-bench

bench-events: ## Events relay on a real nats-server: commit→stream latency, events/s beside `nats bench`, drain after a 60 s outage
	MSA_NATS_SERVER="$$(hack/tools.sh nats-server)" MSA_NATS_CLI="$$(hack/tools.sh nats)" \
	  $(CARGO) test --release -p msa-events --test bench -- --ignored --nocapture

bench-gateway: ## Gateway vs nginx vs HAProxy on loopback (installs nginx, haproxy and wrk); prints tables
	command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null && command -v strace >/dev/null && command -v valgrind >/dev/null \
	  || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light haproxy wrk strace valgrind
	$(CARGO) build --release -p msa-gateway --bins
	# The gateway as its image ships it (profile-guided); the plain release build as `baseline`.
	gateway="$$(CARGO="$(CARGO)" hack/pgo-gateway.sh)"; \
	  hack/bench-gateway.py --syscalls --instructions --gateway "$$gateway" --baseline target/release/msa-gateway $(BENCH_ARGS)
