#!/usr/bin/env bash
# Builds or installs what the test cluster's real node runs, and prints the directory of the built
# binaries (~/.cache/msa/node-<containerd version>/):
#   containerd, containerd-shim-runc-v2, ctr   built from github.com/containerd/containerd/v2
#   kubelet, kube-proxy                          built by hack/build-k8s.sh (same cache as the control plane)
#   kube-router (NetworkPolicy controller)       built by hack/tools.sh from hack/kube-router
#   runc, CNI plugins, nft, conntrack, ipset     Debian's packages (installed when missing)
# Debian 12's containerd (1.6) is too old for kubelet 1.36, hence the Go build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}"
out="$cache/node-$CONTAINERD_VERSION"
mkdir -p "$out"


ensure_debian_packages() {
  local missing=()
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v nft >/dev/null || missing+=(nftables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v ipset >/dev/null || missing+=(ipset)   # kube-router's policy controller
  [[ ${#missing[@]} -eq 0 ]] && return
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; }
}

build_containerd() {
  local mod="$cache/src/containerd-$CONTAINERD_VERSION" pkg=github.com/containerd/containerd/v2
  mkdir -p "$mod"
  printf 'module msa.dev/containerd-build\ngo 1.24\nrequire %s %s\n' "$pkg" "$CONTAINERD_VERSION" > "$mod/go.mod"
  printf 'package main\nimport _ "%s/cmd/containerd"\n' "$pkg" > "$mod/deps.go"
  log "building containerd $CONTAINERD_VERSION (cold: about 4 minutes)"
  (cd "$mod" && GOFLAGS=-mod=mod go mod tidy >&2 2>&1)
  local ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Revision=go-module"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    (cd "$mod" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -tags "no_btrfs urfave_cli_no_docs" \
      -ldflags "$ldflags" -o "$out/$cmd.tmp" "$pkg/cmd/$cmd" && mv "$out/$cmd.tmp" "$out/$cmd")
  done
}

ensure_debian_packages
if [[ ! -x "$out/containerd" || ! -x "$out/containerd-shim-runc-v2" || ! -x "$out/ctr" ]]; then
  start=$SECONDS
  build_containerd
  log "containerd built in $((SECONDS - start)) s"
  record_build_time "containerd, shim, ctr" cold "$((SECONDS - start))"
fi
k8s="$("$here/build-k8s.sh" kubelet kube-proxy)"
ln -sf "$k8s/kubelet" "$out/kubelet"
ln -sf "$k8s/kube-proxy" "$out/kube-proxy"
ln -sf "$("$here/tools.sh" kube-router)" "$out/kube-router"
echo "$out"
