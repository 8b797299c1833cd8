#!/usr/bin/env bash
# make test's driver: runs each step (a make target) in turn, announces it, times it, and ends —
# passed or failed — with a table of each step's time, so a slow first run shows where it went.
#   hack/test-steps.sh MAKE STEP...
set -uo pipefail
make="${1:?path to make}"
shift
steps=("$@")
seconds=()
failed=""
status=0
for i in "${!steps[@]}"; do
  step="${steps[$i]}"
  echo ">> make test: step $((i + 1))/${#steps[@]}: $step ($(date +%H:%M:%S))" >&2
  start=$SECONDS
  # IMAGES_DEP empty: `images` is a step of its own, not built again by the steps that need it.
  "$make" --no-print-directory IMAGES_DEP= "$step"
  rc=$?
  seconds+=($((SECONDS - start)))
  if ((rc != 0)); then
    failed="$step"
    status=$rc
    break
  fi
done

total=0
printf '\n%-16s %8s %8s\n' "make test step" seconds "m:ss" >&2
for i in "${!seconds[@]}"; do
  s=${seconds[$i]}
  total=$((total + s))
  mark=""
  [[ "${steps[$i]}" == "$failed" ]] && mark="  FAILED (exit $status)"
  printf '%-16s %8d %5d:%02d%s\n' "${steps[$i]}" "$s" $((s / 60)) $((s % 60)) "$mark" >&2
done
printf '%-16s %8d %5d:%02d\n' total "$total" $((total / 60)) $((total % 60)) >&2
exit "$status"
