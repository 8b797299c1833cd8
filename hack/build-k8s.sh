#!/usr/bin/env bash
# Builds Kubernetes control-plane binaries and etcd from their Go modules (through the Go module
# proxy), cached by version under ~/.cache/msa/k8s-<version>/. Prints that directory.
#   hack/build-k8s.sh [kube-apiserver kube-controller-manager kube-scheduler etcd ...]
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the staging modules), so a
# small helper module requires it and replaces every k8s.io staging module with the published
# v0.x.y of the same release; the list is derived from k/k's own go.mod.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}"
out="$cache/k8s-$KUBERNETES_VERSION"
mkdir -p "$out"
wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=(kube-apiserver kube-controller-manager kube-scheduler etcd)


build_kubernetes() {
  local cmd="$1" mod="$cache/src/kubernetes-$KUBERNETES_VERSION"
  if [[ ! -f "$mod/go.mod" ]]; then
    mkdir -p "$mod"
    local gomod staging="v0.${KUBERNETES_VERSION#v1.}"
    gomod="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    {
      echo "module msa.dev/k8s-build"
      echo "go $(sed -n 's/^go //p' "$gomod")"
      echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
      sed -n 's#^\s*\(k8s.io/[A-Za-z0-9._-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$gomod"
    } > "$mod/go.mod"
    printf 'package main\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' > "$mod/deps.go"
    (cd "$mod" && GOFLAGS=-mod=mod go mod tidy >&2 2>&1 || true)
  fi
  # Both version packages are stamped: component-base's is what --version and /version report,
  # client-go's goes into the user agent of the component's own API calls.
  local ldflags="-s -w" pkg minor
  minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building $cmd $KUBERNETES_VERSION (cold: several minutes)"
  (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd")
}

build_etcd() {
  local mod="$cache/src/etcd-$ETCD_VERSION"
  mkdir -p "$mod"
  printf 'module msa.dev/etcd-build\ngo 1.24\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" > "$mod/go.mod"
  cat > "$mod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  (cd "$mod" && GOFLAGS=-mod=mod go mod tidy >&2 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/etcd" .)
}

for cmd in "${wanted[@]}"; do
  if [[ -x "$out/$cmd" ]]; then continue; fi
  start=$SECONDS
  case "$cmd" in
    etcd) build_etcd ;;
    kube-*|kubelet|kubectl) build_kubernetes "$cmd" ;;
    *) echo "unknown binary $cmd" >&2; exit 2 ;;
  esac
  log "$cmd built in $((SECONDS - start)) s"
  record_build_time "$cmd" cold "$((SECONDS - start))"
done
echo "$out"
