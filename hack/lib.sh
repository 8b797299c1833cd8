# Shared by the hack/ build scripts (sourced, not run).

log() { echo ">> $*" >&2; }

# record_build_time <what> <cold|warm> <seconds>: appended to the cache's build-times.tsv, which
# `make bench-node` prints.
record_build_time() {
  mkdir -p "${MSA_CACHE:-$HOME/.cache/msa}"
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(date -u +%FT%TZ)" >>"${MSA_CACHE:-$HOME/.cache/msa}/build-times.tsv"
}
