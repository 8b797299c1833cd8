#!/usr/bin/env bash
# The chart's own checks (make lint-chart): helm lint in each supported shape, the values schema
# refusing what the chart does not take (with the message a user sees), and the Argo CD health
# check's table (files/argocd/health_test.yaml) run in gopher-lua as Argo CD runs it.
#   hack/chart-checks.sh path/to/helm
set -euo pipefail
helm="${1:?path to helm}"
root="$(cd "$(dirname "$0")/.." && pwd)"
chart="$root/charts/msa-operator"
# shellcheck source=lib.sh
source "$root/hack/lib.sh"

log "helm lint: cluster-wide, one namespace, and with every optional template"
"$helm" lint --strict "$chart" >/dev/null
"$helm" lint --strict "$chart" --set watchNamespace=demo >/dev/null
"$helm" lint --strict "$chart" --set admissionPolicy.enabled=true --set apiPriority.enabled=true \
  --set metrics.networkPolicy.enabled=true >/dev/null
"$helm" lint --strict "$chart" --set 'watchNamespaces={demo,prod}' --set admissionPolicy.enabled=true \
  --set apiPriority.enabled=true --set metrics.networkPolicy.enabled=true >/dev/null

log "values.schema.json: wrong values are refused before anything renders"
# Each: a --set the schema must refuse, and what helm's message must say.
refused=(
  "replicaCount=two|at '/replicaCount': got string, want integer"
  "replicaCount=0|at '/replicaCount': minimum"
  "concurrency=65|at '/concurrency': maximum"
  "replicaCounts=2|additional properties 'replicaCounts' not allowed"
  "image.pullpolicy=Always|additional properties 'pullpolicy' not allowed"
  "logFormat=xml|at '/logFormat': value must be one of 'json', 'text'"
  "metrics.port=70000|at '/metrics/port': maximum"
  "tracing.samplingRatio=2|at '/tracing/samplingRatio': maximum"
  "watchNamespaces={Demo_NS}|at '/watchNamespaces/0'"
  "podAntiAffinity=always|at '/podAntiAffinity': value must be one of"
  "leaderElection.enabled=maybe|at '/leaderElection/enabled': got string, want boolean"
)
for case in "${refused[@]}"; do
  set_value="${case%%|*}" expected="${case#*|}"
  if out="$("$helm" template "$chart" --set "$set_value" 2>&1 >/dev/null)"; then
    echo "values.schema.json accepted --set $set_value" >&2
    exit 1
  fi
  if [[ "$out" != *"$expected"* ]]; then
    printf 'helm refused --set %s, but without %q:\n%s\n' "$set_value" "$expected" "$out" >&2
    exit 1
  fi
done
log "  ${#refused[@]} wrong values refused, each with its message"

log "Argo CD health check: the runner's own tests, then files/argocd/health_test.yaml in gopher-lua"
(cd "$root/hack/argocd-health" && go test ./... >&2)
"$("$root/hack/tools.sh" argocd-health)" test "$chart/files/argocd"
