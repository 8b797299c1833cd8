#!/usr/bin/env bash
# Starts a bare control plane on loopback — etcd and kube-apiserver only, no controllers, no
# nodes — for trying the operator against a real API server: the CRD's schema and CEL rules,
# server-side apply, RBAC. Built by hack/build-k8s.sh. Everything binds to 127.0.0.1.
#   hack/dev-apiserver.sh up   → prints the kubeconfig path
#   hack/dev-apiserver.sh down
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${MSA_DEV_STATE:-${TMPDIR:-/tmp}/msa-dev-apiserver}"
etcd_port="${MSA_DEV_ETCD_PORT:-23790}"
api_port="${MSA_DEV_API_PORT:-26443}"

down() {
  for name in kube-apiserver etcd; do
    if [[ -f "$state/$name.pid" ]]; then
      kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
    fi
  done
  sleep 1
  rm -rf "$state"
}

up() {
  local bin
  bin="$("$here/build-k8s.sh" kube-apiserver etcd)"
  down
  mkdir -p "$state/pki"
  openssl genrsa -out "$state/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$state/pki/sa.key" -pubout -out "$state/pki/sa.pub" 2>/dev/null
  local token
  token="$(openssl rand -hex 16)"
  echo "$token,admin,admin,system:masters" > "$state/pki/tokens.csv"
  # Audit every write, so a test can count what the operator wrote.
  printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n  verbs: [create, update, patch, delete, deletecollection]\n- level: None\n' > "$state/audit-policy.yaml"

  "$bin/etcd" --data-dir "$state/etcd" --name dev \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
    --initial-cluster "dev=http://127.0.0.1:$((etcd_port + 10))" --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 20))" \
    > "$state/etcd.log" 2>&1 &
  echo $! > "$state/etcd.pid"

  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$state/pki" --token-auth-file "$state/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$state/pki/sa.pub" \
    --service-account-signing-key-file "$state/pki/sa.key" --service-cluster-ip-range 10.96.0.0/24 \
    --audit-log-path "$state/audit.log" --audit-policy-file "$state/audit-policy.yaml" \
    > "$state/kube-apiserver.log" 2>&1 &
  echo $! > "$state/kube-apiserver.pid"

  cat > "$state/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: dev, cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: dev, context: {cluster: dev, user: admin, namespace: default}}]
current-context: dev
YAML
  for _ in $(seq 1 60); do
    if KUBECONFIG="$state/kubeconfig" kubectl get --raw /readyz >/dev/null 2>&1; then
      echo "$state/kubeconfig"
      return 0
    fi
    sleep 1
  done
  echo "kube-apiserver did not become ready; see $state/kube-apiserver.log" >&2
  tail -20 "$state/kube-apiserver.log" >&2
  return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
