#!/usr/bin/env bash
# A real Kubernetes control plane on this machine, for the end-to-end tests and for trying the
# operator: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (standing in for
# kubelets), built from their Go modules by hack/build-k8s.sh and hack/tools.sh, every one bound to
# 127.0.0.1. No container runs: kwok marks scheduled pods Running and Ready and gives them an IP.
#
#   tests/cluster/cluster.sh up     start it (building the binaries once); prints the env file
#   tests/cluster/cluster.sh down   stop it and delete its state
#   tests/cluster/cluster.sh env    print the env file of a running cluster
#
# The env file exports KUBECONFIG, MSA_E2E_KUBECTL, MSA_E2E_HELM, MSA_E2E_AUDIT_LOG and
# MSA_E2E_STATE for the tests. Network safety: pod IPs come from 198.18.0.0/17 and the node IP is
# 198.18.128.1, inside 198.18.0.0/15, which gets a blackhole route before anything starts, so no
# packet to a pod or node address can leave the machine. Nothing here dials those addresses.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="${MSA_CLUSTER_STATE:-${TMPDIR:-/tmp}/msa-cluster}"
base_port="${MSA_CLUSTER_BASE_PORT:-26400}"
etcd_port=$((base_port + 1))       # client; +2 peer, +3 metrics
api_port=$((base_port + 43))       # 26443
kcm_port=$((base_port + 57))       # 26457
sched_port=$((base_port + 59))     # 26459
kwok_port=$((base_port + 50))      # 26450
readonly pod_cidr=198.18.0.0/17 node_ip=198.18.128.1 guarded=198.18.0.0/15
readonly components=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

log() { echo ">> $*" >&2; }

down() {
  local name pid
  for name in "${components[@]}"; do
    [[ -f "$state/$name.pid" ]] || continue
    pid="$(cat "$state/$name.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$state"
}

# No packet to the pod and node range may leave the machine: a blackhole route in the root
# namespace, checked rather than assumed. Test hosts in network namespaces get more specific routes.
guard_network() {
  if ! ip route show type blackhole | grep -q "^blackhole $guarded"; then
    ip route replace blackhole "$guarded" 2>/dev/null || {
      echo "cannot add 'ip route add blackhole $guarded' (needs CAP_NET_ADMIN); refusing to start a" \
        "cluster whose pod addresses could be routed off this machine" >&2
      exit 1
    }
  fi
  local via
  via="$(ip route get 198.18.0.1 2>&1 || true)"
  if ! grep -Eq 'blackhole|No route|unreachable|prohibited|Invalid argument' <<<"$via"; then
    echo "198.18.0.1 still routes off the machine: $via" >&2
    exit 1
  fi
  log "network guard: blackhole route for $guarded"
}

start() {
  local name="$1"; shift
  "$@" >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

# wait_for <component> <seconds> <command...>: polls the command until it succeeds; fails at once
# when the component's process has died, and shows the end of its log either way.
wait_for() {
  local name="$1" tries="$2"; shift 2
  for _ in $(seq 1 "$tries"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$state/$name.pid")" 2>/dev/null || { echo "$name exited" >&2; break; }
    sleep 1
  done
  echo "$name did not come up; last lines of $state/$name.log:" >&2
  tail -30 "$state/$name.log" >&2
  down
  exit 1
}

up() {
  local bin helm kwok
  bin="$("$root/hack/build-k8s.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)"
  helm="$("$root/hack/tools.sh" helm)"
  kwok="$("$root/hack/tools.sh" kwok)"
  guard_network
  down
  mkdir -p "$state/pki"
  openssl genrsa -out "$state/pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$state/pki/sa.key" -pubout -out "$state/pki/sa.pub" 2>/dev/null
  local token
  token="$(openssl rand -hex 16)"
  echo "$token,admin,admin,system:masters" >"$state/pki/tokens.csv"
  # Every write is audited (metadata only), so a test can count what the operator wrote.
  cat >"$state/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
YAML
  cat >"$state/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: msa-e2e, cluster: {server: "https://127.0.0.1:$api_port", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: msa-e2e, context: {cluster: msa-e2e, user: admin, namespace: default}}]
current-context: msa-e2e
YAML
  local kc="$state/kubeconfig" kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig")

  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --data-dir "$state/etcd" --name msa-e2e \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "msa-e2e=http://127.0.0.1:$((etcd_port + 1))" \
    --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 2))" --unsafe-no-fsync

  log "starting kube-apiserver on 127.0.0.1:$api_port"
  # The service range is never routed anywhere: no kube-proxy runs, and tests never dial a ClusterIP.
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$state/pki" --token-auth-file "$state/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$state/pki/sa.pub" \
    --service-account-signing-key-file "$state/pki/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
    --audit-log-path "$state/audit.log" --audit-policy-file "$state/audit-policy.yaml" \
    --audit-log-mode blocking
  wait_for kube-apiserver 90 "${kubectl[@]}" get --raw /readyz

  # Higher client rates than the defaults (20/s) so a hundred apps roll out quickly; every
  # controller the tests rely on (deployment, replicaset, endpointslice, garbagecollector,
  # serviceaccount, namespace) is in the default set.
  log "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/apiserver.crt" \
    --kube-api-qps 200 --kube-api-burst 400 --concurrent-deployment-syncs 10 \
    --concurrent-replicaset-syncs 10 --concurrent-service-endpoint-syncs 10
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
    --kube-api-qps 200 --kube-api-burst 400

  log "starting kwok (pods get IPs in $pod_cidr)"
  start kwok "$kwok" --kubeconfig "$kc" --config "$here/kwok.yaml" --cidr "$pod_cidr" \
    --node-ip "$node_ip" --server-address "127.0.0.1:$kwok_port"

  "${kubectl[@]}" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec:
  podCIDR: $pod_cidr
  podCIDRs: [$pod_cidr]
YAML
  wait_for kwok 60 \
    "${kubectl[@]}" wait --for=condition=Ready node/kwok-node-0 --timeout=1s
  wait_for kube-controller-manager 60 \
    "${kubectl[@]}" get serviceaccount default -n default

  cat >"$state/env" <<ENV
export KUBECONFIG=$kc
export MSA_E2E_STATE=$state
export MSA_E2E_KUBECTL=$bin/kubectl
export MSA_E2E_HELM=$helm
export MSA_E2E_AUDIT_LOG=$state/audit.log
ENV
  log "cluster up: KUBECONFIG=$kc (logs in $state)"
  echo "$state/env"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) [[ -f "$state/env" ]] && echo "$state/env" || { echo "no cluster running (state $state)" >&2; exit 1; } ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
