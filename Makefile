# Everyday targets. `make test` is what CI runs (see README).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
HELM = $(shell hack/tools.sh helm)
INSTALL_NAMESPACE ?= msa-system

.PHONY: all build test fmt fmt-check clippy unit crds manifests check-generated lint-chart images run-operator cluster-up cluster-down e2e bench-operator help

all: build

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

test: fmt-check clippy unit lint-chart check-generated e2e ## Everything CI checks (e2e included)
	@echo "make test: all checks passed"

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

clippy: ## Lint (warnings are errors)
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Unit, render, mocked-API and route tests (on SQLite and on a loopback PostgreSQL it starts)
	url="$$(hack/postgres.sh up)"; trap 'hack/postgres.sh down' EXIT; \
	  MSA_TEST_POSTGRES_URL="$$url" $(CARGO) test --workspace

crds: ## Regenerate crds/ and the chart's copy from the Rust types
	$(CARGO) run -q -p msa-operator --bin crdgen > crds/microserviceapps.msa.dev.yaml
	cp crds/microserviceapps.msa.dev.yaml charts/msa-operator/crds/

manifests: ## Render manifests/install.yaml from the chart
	hack/render-install.sh "$(HELM)" > manifests/install.yaml

check-generated: ## Fail when crds/ or manifests/install.yaml are stale
	diff -u manifests/install.yaml <(hack/render-install.sh "$(HELM)") \
	  || { echo "manifests/install.yaml is stale: run 'make manifests' and commit it" >&2; exit 1; }
	@echo "generated files are up to date (crds/ is checked by cargo test)"

lint-chart: ## helm lint the chart, cluster-wide and namespaced
	"$(HELM)" lint --strict charts/msa-operator
	"$(HELM)" lint --strict charts/msa-operator --set watchNamespace=demo

images: ## Build the container images (needs a Docker or Podman engine)
	docker build --build-arg BIN=msa-operator -t ghcr.io/msa-dev/msa-operator:0.1.0 .

run-operator: ## Run the operator against the current kubeconfig
	$(CARGO) run -p msa-operator -- --log-format text

cluster-up: ## Start a real control plane on 127.0.0.1 (builds it once); prints its env file
	tests/cluster/cluster.sh up

cluster-down: ## Stop the control plane and delete its state
	tests/cluster/cluster.sh down

e2e: ## Bring a cluster up, run the end-to-end tests on it, always tear it down
	$(CARGO) build -p msa-operator --bin msa-operator
	tests/cluster/run.sh $(CARGO) test -p msa-e2e --test e2e -- --ignored --test-threads=4

bench-operator: ## Operator figures on a fresh cluster: apply→Ready, 100 apps, RSS, writes
	$(CARGO) build --release -p msa-operator --bin msa-operator
	MSA_E2E_OPERATOR=target/release/msa-operator tests/cluster/run.sh $(CARGO) run --release -p msa-e2e --bin operator-bench
