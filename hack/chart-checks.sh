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
  "replicaCount=-1|at '/replicaCount': minimum"
  "resources.limits.memory=512MB|at '/resources/limits/memory'"
  "podDisruptionBudget.maxUnavailable=150%|at '/podDisruptionBudget/maxUnavailable'"
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
  if out="$("$helm" template "$chart" --kube-version 1.36.0 --set "$set_value" 2>&1 >/dev/null)"; then
    echo "values.schema.json accepted --set $set_value" >&2
    exit 1
  fi
  if [[ "$out" != *"$expected"* ]]; then
    printf 'helm refused --set %s, but without %q:\n%s\n' "$set_value" "$expected" "$out" >&2
    exit 1
  fi
done
log "  ${#refused[@]} wrong values refused, each with its message"
# What users set and --set types loosely (a fraction or an all-digit tag arrives as a string or a
# number; a parent chart adds `enabled`): each must still render.
accepted=(
  "tracing.samplingRatio=0.5" "image.tag=1234567" "watchNamespace=demo\, prod" "replicaCount=0"
  "enabled=true" "resources.requests.cpu=0.5" "resources.limits.memory=1Gi"
  "serviceMonitor.interval=1m30s" "podDisruptionBudget.maxUnavailable=50%"
)
for set_value in "${accepted[@]}"; do
  "$helm" template "$chart" --kube-version 1.36.0 --set "$set_value" >/dev/null \
    || { echo "values.schema.json refused --set $set_value, which the chart takes" >&2; exit 1; }
done
log "  ${#accepted[@]} values users set loosely accepted"

log "watchConfigSecrets: the operator may read Secrets only when asked to, in every shape"
python3 -c 'import yaml' 2>/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-yaml >/dev/null
# Each shape rendered both ways: the RBAC objects and the operator's arguments. Off, no rule in
# any Role or ClusterRole grants get, list or watch on Secrets and the flag is absent; on, every
# Role or ClusterRole carrying the app rules grants them and the flag is passed.
for shape in "" "--set watchNamespaces={demo,prod}"; do
  for watch in false true; do
    # shellcheck disable=SC2086
    "$helm" template msa-operator "$chart" --kube-version 1.36.0 $shape \
      --set watchConfigSecrets=$watch | python3 -c '
import sys, yaml
watch = sys.argv[1] == "true"
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
def reads_secrets(rule):
    return "secrets" in rule.get("resources", []) and {"list", "watch"} & set(rule.get("verbs", []))
app_roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")
             and any("microserviceapps" in r.get("resources", []) for r in d.get("rules", []))]
assert app_roles, "no Role or ClusterRole with the app rules"
for role in [d for d in docs if d["kind"] in ("Role", "ClusterRole")]:
    granted = any(reads_secrets(r) for r in role.get("rules", []))
    expected = watch and role in app_roles
    kind, name = role["kind"], role["metadata"]["name"]
    assert granted == expected, f"{kind} {name}: reads Secrets {granted}, expected {expected}"
args = [a for d in docs if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"] for a in c.get("args", [])]
assert ("--watch-config-secrets" in args) == watch, f"--watch-config-secrets in {args}"
print(f"    {len(app_roles)} role(s) with the app rules; Secrets readable: {watch}")
' "$watch" || { echo "watchConfigSecrets=$watch ${shape:-cluster-wide}: the RBAC is wrong (above)" >&2; exit 1; }
  done
done

log "Argo CD health check: the runner's own tests, then files/argocd/health_test.yaml in gopher-lua"
(cd "$root/hack/argocd-health" && go test ./... >&2)
"$("$root/hack/tools.sh" argocd-health)" test "$chart/files/argocd"
