#!/usr/bin/env bash
# Builds a tool the build and tests use from the Go module proxy, cached by version under
# ~/.cache/msa/tools/<tool>-<version>/, and prints the binary's path.
#   hack/tools.sh helm|kwok|provisioner
# provisioner is this repository's hack/provisioner (the test cluster's storage), cached by the
# hash of its sources.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}/tools"

tool="${1:?usage: $0 helm|kwok|provisioner}"
case "$tool" in
  helm) version="$HELM_VERSION" module="helm.sh/helm/v3/cmd/helm" ;;
  kwok) version="$KWOK_VERSION" module="sigs.k8s.io/kwok/cmd/kwok" ;;
  provisioner)
    src="$here/provisioner"
    version="$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-12)"
    dir="$cache/$tool-$version"
    if [[ ! -x "$dir/$tool" ]]; then
      log "building the test cluster's storage provisioner (first run only, about 1-2 min)"
      start=$SECONDS
      mkdir -p "$dir"
      (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dir/$tool.tmp" . >&2) \
        && mv "$dir/$tool.tmp" "$dir/$tool"
      record_build_time "$tool" cold "$((SECONDS - start))"
    fi
    echo "$dir/$tool"
    exit 0 ;;
  *) echo "unknown tool $tool (known: helm, kwok, provisioner)" >&2; exit 2 ;;
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
