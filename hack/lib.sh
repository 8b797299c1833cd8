# Shared by the hack/ build scripts (sourced, not run).

log() { echo ">> $*" >&2; }

# record_build_time <what> <cold|warm> <seconds>: appended to the cache's build-times.tsv, which
# `make bench-node` prints.
record_build_time() {
  mkdir -p "${MSA_CACHE:-$HOME/.cache/msa}"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(date -u +%FT%TZ)" >>"${MSA_CACHE:-$HOME/.cache/msa}/build-times.tsv"
}

# sync_build_source <root> <copy>: the sources copied to a fixed place for the release builds
# under the cache. Cargo rebuilds a workspace crate whenever its folder moves, and CI builds in a
# fresh clone every time; the copy is refreshed by content (rsync --checksum, without --times), so
# unchanged files keep their timestamps and only crates that really changed are rebuilt.
sync_build_source() {
  command -v rsync >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync >&2
  mkdir -p "$2"
  # -L: a symlinked file (the events migration each service links to) is copied as the file.
  rsync -rL --checksum --delete --exclude /target --exclude /.git "$1/" "$2/"
}
