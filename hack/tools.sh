#!/usr/bin/env bash
# Builds the tools the tests need from the Go module proxy, cached by version under
# ~/.cache/msa/tools, and prints the directory to put on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${MSA_CACHE:-$HOME/.cache/msa}/tools"

helm_dir="$cache/helm-$HELM_VERSION"
if [[ ! -x "$helm_dir/helm" ]]; then
  echo ">> building helm $HELM_VERSION from the Go module proxy (first run only, ~2 min)" >&2
  mkdir -p "$helm_dir"
  GOBIN="$helm_dir" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
echo "$helm_dir"
