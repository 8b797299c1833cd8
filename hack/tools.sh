#!/usr/bin/env bash
# Builds a tool the build and tests use from the Go module proxy, cached by version under
# ~/.cache/msa/tools/<tool>-<version>/, and prints the binary's path.
#   hack/tools.sh helm|kwok|nats-server|nats|provisioner|jaeger|kube-router|argocd-health
# provisioner (the test cluster's storage), jaeger (the trace tests' OTLP receiver),
# kube-router (the real node's NetworkPolicy controller) and argocd-health (the chart's Argo CD
# health check run in gopher-lua, as Argo CD runs it) are Go modules in this repository
# (hack/<tool>), cached by the hash of their go.mod, go.sum and sources.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}/tools"

# Builds package $2 of the module hack/$1 into the cache; prints the binary's path.
build_local_module() {
  local tool="$1" package="$2" what="$3" src="$here/$1" version dir start
  version="$(find "$src" -maxdepth 1 -name '*.go' -print0 | LC_ALL=C sort -z \
    | xargs -0 cat "$src/go.mod" "$src/go.sum" | sha256sum | cut -c1-12)"
  dir="$cache/$tool-$version"
  if [[ ! -x "$dir/$tool" ]]; then
    log "building $what (first run only, about 1-6 min)"
    start=$SECONDS
    mkdir -p "$dir"
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/$tool.tmp" "$package" >&2) \
      && mv "$dir/$tool.tmp" "$dir/$tool"
    log "$tool built in $((SECONDS - start)) s"
    record_build_time "$tool" cold "$((SECONDS - start))"
  fi
  echo "$dir/$tool"
}

tool="${1:?usage: $0 helm|kwok|nats-server|nats|provisioner|jaeger|kube-router|argocd-health}"
case "$tool" in
  helm) version="$HELM_VERSION" module="helm.sh/helm/v3/cmd/helm" ;;
  kwok) version="$KWOK_VERSION" module="sigs.k8s.io/kwok/cmd/kwok" ;;
  nats-server) version="$NATS_SERVER_VERSION" module="github.com/nats-io/nats-server/v2" ;;
  nats) version="$NATSCLI_VERSION" module="github.com/nats-io/natscli/nats" ;;
  provisioner) build_local_module provisioner . "the test cluster's storage provisioner"; exit 0 ;;
  jaeger)
    build_local_module jaeger github.com/jaegertracing/jaeger/cmd/jaeger \
      "Jaeger, the trace tests' OTLP receiver, from its Go module"
    exit 0 ;;
  argocd-health)
    build_local_module argocd-health . "argocd-health, Argo CD's Lua health checks in gopher-lua"
    exit 0 ;;
  kube-router)
    build_local_module kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
      "kube-router, the real node's NetworkPolicy controller, from its Go module"
    exit 0 ;;
  *) echo "unknown tool $tool (known: helm, kwok, nats-server, nats, provisioner, jaeger, kube-router, argocd-health)" >&2; exit 2 ;;
esac
dir="$cache/$tool-$version"
if [[ ! -x "$dir/$tool" ]]; then
  log "building $tool $version from the Go module proxy (first run only, 1-3 min)"
  start=$SECONDS
  mkdir -p "$dir"
  GOBIN="$dir" GOFLAGS=-mod=mod CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "$module@$version" >&2
  log "$tool built in $((SECONDS - start)) s"
  record_build_time "$tool" cold "$((SECONDS - start))"
fi
echo "$dir/$tool"
