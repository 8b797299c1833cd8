#!/usr/bin/env bash
# Runs a command against a fresh test cluster: brings it up (failing loudly if it cannot start),
# runs the command with the cluster's env, and always tears the cluster down, keeping its logs
# under target/e2e-logs/ when the command fails.
#   tests/cluster/run.sh cargo test -p msa-e2e ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# Torn down however this ends: success, failure, Ctrl-C or SIGTERM.
trap 'exit 130' INT TERM
trap '"$here/cluster.sh" down' EXIT
env_file="$("$here/cluster.sh" up)" || { echo "e2e: the test cluster did not start (see above)" >&2; exit 1; }
# shellcheck disable=SC1090
source "$env_file"
status=0
"$@" || status=$?
if [[ $status -ne 0 ]]; then
  rm -rf "$root/target/e2e-logs" && mkdir -p "$root/target/e2e-logs"
  cp "$MSA_E2E_STATE"/*.log "$root/target/e2e-logs/" 2>/dev/null || true
  cp -r "$MSA_E2E_STATE"/node/pod-logs "$root/target/e2e-logs/" 2>/dev/null || true
  echo "e2e: failed (exit $status); control-plane logs kept in target/e2e-logs/" >&2
fi
exit $status
