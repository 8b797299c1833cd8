#!/usr/bin/env bash
# Builds the container images without a daemon or a registry and prints where they are:
#   hack/images.sh [out-dir]        (default target/images)
# Each image is one statically linked release binary FROM scratch, running as 65532:65532, written
# as a docker-archive tarball by hack/imagetool (go-containerregistry). The tarballs load with
# `docker load -i`, `kind load image-archive`, `minikube image load` and `ctr images import`.
# Also builds msa-pause, the pod sandbox image the test cluster's node pins (nothing can be pulled).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
# shellcheck source=lib.sh
source "$here/lib.sh"
out="${1:-$root/target/images}"
cache="${MSA_CACHE:-$HOME/.cache/msa}"
cargo="${CARGO:-cargo}"
target=x86_64-unknown-linux-gnu
registry=ghcr.io/msa-dev
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
revision="$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
source_url="$(sed -n 's/^repository = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
# Deployable → the port it listens on (the operator's metrics/health port; the services' API port;
# the stream keeper's readiness).
declare -A ports=([msa-operator]=8080 [msa-user]=8080 [msa-order]=8080 [msa-product]=8080 [msa-gateway]=8080 [msa-streams]=8223)
binaries=(msa-operator msa-user msa-order msa-product msa-gateway msa-streams)
# Deployable → its package, where they differ (the stream keeper is a binary of msa-events).
declare -A package_of=([msa-streams]=msa-events)

mkdir -p "$out"

# The image writer, built once per go-containerregistry version and source.
sum="$(cat "$here/imagetool/main.go" "$here/imagetool/go.mod" | sha256sum | cut -c1-12)"
tool="$cache/tools/imagetool-$GO_CONTAINERREGISTRY_VERSION-$sum/imagetool"
if [[ ! -x "$tool" ]]; then
  tool_start=$SECONDS
  log "building imagetool (go-containerregistry $GO_CONTAINERREGISTRY_VERSION)"
  mkdir -p "$(dirname "$tool")"
  (cd "$here/imagetool" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tool" .)
  record_build_time imagetool cold "$((SECONDS - tool_start))"
fi

# The static release builds run in a copy of the sources at a fixed place under the cache (see
# sync_build_source), each with a target folder of its own there.
build_src="$cache/images-src"
target_dir="$cache/cargo-target-images"
sync_build_source "$root" "$build_src"
start=$SECONDS
kind=warm
[[ -x "$target_dir/$target/release/msa-operator" ]] || kind=cold
packages=()
# The gateway is built apart, with its profile (hack/pgo-gateway.sh).
for b in "${binaries[@]}"; do [[ $b == msa-gateway ]] || packages+=(-p "${package_of[$b]:-$b}" --bin "$b"); done
log "building static release binaries: ${packages[*]} (cold: about 10 minutes on 2 cores)"
# crt-static links glibc statically (static-pie): the binaries run FROM scratch. The flag reaches
# only the target's code, not build scripts or proc macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  "$cargo" build --manifest-path "$build_src/Cargo.toml" --release --locked --target "$target" \
    --target-dir "$target_dir" "${packages[@]}"
log "binaries built in $((SECONDS - start)) s"
record_build_time "static release binaries (cargo)" "$kind" "$((SECONDS - start))"
bin_dir="$target_dir/$target/release"
gateway="$("$here/pgo-gateway.sh")"
cp --remove-destination "$gateway" "$bin_dir/msa-gateway"

gcc -static -Os -s -o "$bin_dir/msa-pause" "$here/pause.c"
# The event broker the operator runs: the NATS project's own nats-server, built from its Go
# module once (hack/tools.sh, static: CGO off), in an image like ours.
cp --remove-destination "$("$here/tools.sh" nats-server)" "$bin_dir/nats-server"

image() {
  local bin="$1" ref="$2"; shift 2
  "$tool" -binary "$bin_dir/$bin" -name "$ref" -out "$out/$bin.tar" \
    -label "org.opencontainers.image.title=$bin" \
    -label "org.opencontainers.image.source=$source_url" \
    -label "org.opencontainers.image.version=$version" \
    -label "org.opencontainers.image.revision=$revision" \
    -label "org.opencontainers.image.licenses=Apache-2.0" "$@"
}
for b in "${binaries[@]}"; do
  image "$b" "$registry/$b:$version" -port "${ports[$b]}"
done
image msa-pause "$registry/msa-pause:$version"
"$tool" -binary "$bin_dir/nats-server" -name "$registry/msa-nats:$version" -out "$out/msa-nats.tar" \
  -port 4222 -port 8222 -port 6222 \
  -label "org.opencontainers.image.title=msa-nats" \
  -label "org.opencontainers.image.source=https://github.com/nats-io/nats-server" \
  -label "org.opencontainers.image.version=$NATS_SERVER_VERSION" \
  -label "org.opencontainers.image.licenses=Apache-2.0"

printf '%-14s %-40s %9s %9s\n' image reference binary tarball >&2
for b in "${binaries[@]}" msa-pause msa-nats; do
  ref="$registry/$b:$version"
  bin="$b"; [[ $b == msa-nats ]] && bin=nats-server
  printf '%-14s %-40s %8sK %8sK\n' "$b" "$ref" \
    "$(( $(stat -c %s "$bin_dir/$bin") / 1024 ))" "$(( $(stat -c %s "$out/$b.tar") / 1024 ))" >&2
done
log "images written to $out (load with: kind load image-archive $out/msa-user.tar, ...)"
echo "$out"
