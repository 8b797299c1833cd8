#!/usr/bin/env bash
# Builds the static msa-gateway the image ships, with profile-guided optimisation, and prints its
# path:   hack/pgo-gateway.sh
#
#   1. an instrumented build (-Cprofile-generate) of msa-gateway and msa-echo;
#   2. hack/pgo-train.py sends a bounded mix of requests through it on loopback;
#   3. llvm-profdata (rustup's llvm-tools, the toolchain's own LLVM) merges the counts;
#   4. the release build with -Cprofile-use.
#
# Why: the gateway's hot path is short and branchy, spread over tokio, http, httparse, tower and
# our crates. With the counts, LLVM inlines and lays out code for the path requests really take:
# about 19 % fewer instructions per request and 20-47 % less user CPU time (BENCHMARKS.md).
#
# Steps 1-3 run only when the sources the gateway is built from, the lock file, the toolchain or
# the training changed since the cached profile was made; otherwise it is reused, and step 4 is
# a no-op when nothing changed. Same flags and sources as hack/images.sh (which calls this).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"
cache="${MSA_CACHE:-$HOME/.cache/msa}"
cargo="${CARGO:-cargo}"
target=x86_64-unknown-linux-gnu
build_src="$cache/images-src"
pgo="$cache/pgo-gateway"
static="-C target-feature=+crt-static"

sync_build_source "$root" "$build_src"

# build_gateway <what> <target-dir> <rustflags> <cargo args...>: a static release build of the
# gateway's package from the synced sources, its time recorded.
build_gateway() {
  local what="$1" dir="$2" flags="$3" start=$SECONDS kind=warm
  shift 3
  [[ -d "$dir" ]] || kind=cold
  RUSTFLAGS="${RUSTFLAGS:-} $static $flags" \
    "$cargo" build --manifest-path "$build_src/Cargo.toml" --release --locked --target "$target" \
      --target-dir "$dir" -p msa-gateway "$@"
  record_build_time "$what" "$kind" "$((SECONDS - start))"
}

# The folders of the workspace crates msa-gateway is built from: itself and its path
# dependencies (normal and build, not dev), transitively — not the other services, nor tests.
gateway_crates() {
  (cd "$build_src" && "$cargo" metadata --format-version 1 --no-deps --offline) | python3 -c '
import json, os, sys
packages = {p["name"]: p for p in json.load(sys.stdin)["packages"]}
todo, seen = ["msa-gateway"], set()
while todo:
    name = todo.pop()
    if name in seen or name not in packages:
        continue
    seen.add(name)
    todo += [d["name"] for d in packages[name]["dependencies"]
             if d.get("path") and d.get("kind") in (None, "build")]
for name in sorted(seen):
    print(os.path.relpath(os.path.dirname(packages[name]["manifest_path"]), sys.argv[1]))
' "$build_src"
}

# make_profile <profile>: steps 1-3, unless the cached profile was made from the same inputs.
make_profile() {
  local profile="$1" key instrumented crates
  # What the profile depends on: the sources the gateway binary is compiled from (its crates'
  # manifests, src/ and build scripts; a change to another service or to a test re-trains
  # nothing, and an unchanged profile leaves step 4 a no-op), the lock file, the toolchain and
  # flags, and how it is trained (contents only: CI builds from a fresh clone at another path
  # each time).
  mapfile -t crates < <(gateway_crates)
  ((${#crates[@]} > 0)) || { echo "could not list the gateway's crates (cargo metadata)" >&2; exit 1; }
  key="$( (rustc -vV; echo "$target ${RUSTFLAGS:-} $static"; cd "$build_src" && find Cargo.toml \
            Cargo.lock "${crates[@]}" -type f \( -path '*/src/*' -o -name Cargo.toml -o -name Cargo.lock -o -name build.rs \) \
            -not -path '*/target/*' -print0 | sort -z | xargs -0 sha256sum;
           sha256sum <"$here/pgo-train.py") | sha256sum | cut -c1-16)"
  if [[ "$(cat "$pgo/key" 2>/dev/null)" == "$key" && -s "$profile" ]]; then
    log "gateway profile: cached (sources unchanged)"
    return
  fi
  log "gateway profile 1/3: instrumented build (cold: about 6 minutes on 2 cores)"
  build_gateway "msa-gateway instrumented (cargo)" "$cache/cargo-target-pgo-generate" \
    "-Cprofile-generate=$pgo/raw" --bin msa-gateway --bin msa-echo
  log "gateway profile 2/3: training on loopback"
  rm -rf "$pgo/raw"
  instrumented="$cache/cargo-target-pgo-generate/$target/release"
  "$here/pgo-train.py" "$instrumented/msa-gateway" "$instrumented/msa-echo" "$pgo/raw"
  log "gateway profile 3/3: merging"
  "$profdata" merge -o "$profile.new" "$pgo/raw"/*.profraw
  mv "$profile.new" "$profile"
  rm -rf "$pgo/raw"
  echo "$key" >"$pgo/key"
}

# rustc's own LLVM reads the profile, so the merge must be done by the same LLVM version.
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  log "installing rustup's llvm-tools (llvm-profdata for the gateway's profile)"
  rustup component add llvm-tools >&2 || true
fi
mkdir -p "$pgo"
if [[ -x "$profdata" ]]; then
  make_profile "$pgo/gateway.profdata"
  use="-Cprofile-use=$pgo/gateway.profdata"
  log "building the static msa-gateway with its profile"
else
  # A toolchain without rustup: the same gateway, without the profile's speed-up.
  use=""
  log "WARNING: no llvm-profdata for this toolchain; building msa-gateway without a profile"
fi
build_gateway "msa-gateway with profile (cargo)" "$cache/cargo-target-pgo" "$use" --bin msa-gateway
echo "$cache/cargo-target-pgo/$target/release/msa-gateway"
