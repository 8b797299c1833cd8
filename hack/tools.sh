#!/usr/bin/env bash
# Builds a tool the build and tests use from the Go module proxy, cached by version under
# ~/.cache/msa/tools/<tool>-<version>/, and prints the binary's path.
#   hack/tools.sh helm|kwok
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}/tools"

tool="${1:?usage: $0 helm|kwok}"
case "$tool" in
  helm) version="$HELM_VERSION" module="helm.sh/helm/v3/cmd/helm" ;;
  kwok) version="$KWOK_VERSION" module="sigs.k8s.io/kwok/cmd/kwok" ;;
  *) echo "unknown tool $tool (known: helm, kwok)" >&2; exit 2 ;;
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
