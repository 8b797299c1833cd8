#!/usr/bin/env bash
# A real Kubernetes cluster on this machine, for the end-to-end tests and for trying the operator:
# etcd, kube-apiserver, kube-controller-manager and kube-scheduler (hack/build-k8s.sh), a real node
# — containerd, runc, CNI, kubelet, kube-proxy in a network namespace of its own (node.sh,
# hack/build-node.sh) — and kwok standing in for kubelets where tests need hundreds of pods.
#
#   tests/cluster/cluster.sh up     start it (building the binaries once); prints the env file
#   tests/cluster/cluster.sh down   stop it and remove everything it left (also after a failed or
#                                   interrupted run): processes, mounts, namespaces, cgroups, sysctls
#   tests/cluster/cluster.sh env    print the env file of a running cluster
#   tests/cluster/cluster.sh restart-node
#                                   power-cycle the real node: its processes and its pods' end at
#                                   once, then containerd, kubelet and kube-proxy start again
#   tests/cluster/cluster.sh enforce-policies
#                                   start kube-router's NetworkPolicy controller on the real node
#
# MSA_CLUSTER_NODES=real,kwok (default) starts both nodes; the kwok node is then tainted, and a
# namespace opts into it with the PodNodeSelector and PodTolerationRestriction annotations that
# tests/src/cluster.rs sets (Placement::Kwok).
# MSA_CLUSTER_NODES=kwok starts only kwok, untainted (nothing runs for real; no images needed).
# The real node runs the images in MSA_CLUSTER_IMAGES (default target/images, from `make images`).
#
# The env file exports KUBECONFIG, MSA_E2E_KUBECTL, MSA_E2E_HELM, MSA_E2E_AUDIT_LOG, MSA_E2E_STATE,
# MSA_E2E_ARGOCD_HEALTH (the chart's Argo CD health check run as Argo CD runs it)
# and, with a real node, MSA_E2E_NODE_NAME / MSA_E2E_NODE_IP / MSA_E2E_NODE_READY_SECONDS for the
# tests, MSA_E2E_CTR (the node test kills a container's process with it; also for a person:
# `$MSA_E2E_CTR images ls`) and MSA_E2E_NODE_NS for a person looking inside the node
# (`nsenter --net=/run/netns/$MSA_E2E_NODE_NS ...`).
#
# Network safety: every address used here is inside 198.18.0.0/15, which gets a blackhole route
# before anything starts, so no packet to a pod, node or Service address can leave the machine;
# the node's namespace has no default route and an nft table that drops (and counts) anything to
# or from outside that range. Every control-plane component binds to 127.0.0.1, except the API
# server, which binds its own 198.18.250.1 so that the node and pods reach it.
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
nodes="${MSA_CLUSTER_NODES:-real,kwok}"
images="${MSA_CLUSTER_IMAGES:-$root/target/images}"
readonly guarded=198.18.0.0/15
# Beside the state folder, not in it: `down` removes the folder, and a route it had to keep
# must still be known as ours to the next `down`.
readonly route_marker="$state.guard-route-added"
# kwok's fake node and its pods.
readonly kwok_pod_cidr=198.18.0.0/17 kwok_node_ip=198.18.128.1
# The real node (node.sh): its link to this namespace, its pods, the Service range.
readonly host_ip=198.18.250.1 node_ip=198.18.250.2 node_name=msa-node-0 node_ns=msa-node
readonly pod_cidr=198.18.160.0/24 pod_gateway=198.18.160.1
readonly service_cidr=198.19.0.0/16 first_service_ip=198.19.0.1 cluster_dns=198.19.0.10
# Pods' resolver: inside the guarded range and unrouted, so a lookup fails at once and no pod
# ever learns the host's resolver. No cluster DNS runs.
readonly resolver_ip=198.18.250.53
# The pod sandbox image `make images` builds, tagged with the workspace's version like the others.
sandbox_image="ghcr.io/msa-dev/msa-pause:$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
readonly sandbox_image
readonly components=(provisioner kwok kube-scheduler kube-controller-manager kube-apiserver etcd)
# PostgreSQL for apps with spec.database (real node only): Debian's, on the host side of the
# node's link, so pods reach it over 198.18.x and nothing else can.
readonly pg_port=$((base_port + 32))  # 26432
# The kwok node's taint while a real node is there; a namespace tolerates it through the
# PodTolerationRestriction annotation that tests/src/cluster.rs sets (Placement::Kwok).
readonly kwok_taint_key=kwok.x-k8s.io/node kwok_taint_value=fake

log() { echo ">> $*" >&2; }
has_real_node() { [[ ",$nodes," == *",real,"* ]]; }

# stop_component <name>: SIGTERM by its PID file, SIGKILL after 5 s.
stop_component() {
  local name="$1" pid
  [[ -f "$state/$name.pid" ]] || return 0
  pid="$(cat "$state/$name.pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$state/$name.pid"
}

# shellcheck source=node.sh
source "$here/node.sh"

# Whether a program that dials the API server's 198.18 address still runs. One name per pgrep:
# process names are at most 15 characters, and pgrep warns about (and may not match) a longer
# pattern.
dialer_running() {
  local name
  for name in msa-operator operator-scale operator-bench node-bench kubectl helm msa-local \
    msa-gateway msa-order msa-user msa-product; do
    pgrep -x "$name" >/dev/null && return 0
  done
  return 1
}

down() {
  local name
  node_down
  for name in "${components[@]}"; do stop_component "$name"; done
  if [[ -d "$state/postgres" ]]; then
    MSA_PG_STATE="$state/postgres" MSA_PG_PORT=$pg_port "$root/hack/postgres.sh" down
  fi
  # The guard route goes last, only if `up` added it (a route someone else set stays), and only
  # when nothing could still send to the range: no socket to it, and none of the programs that
  # dial the API server's 198.18 address left running (a test killed by a timeout can leave an
  # operator behind). Otherwise it stays, harmless, and the next `down` tries again.
  if [[ -f "$route_marker" ]]; then
    if ss -Htn state established state syn-sent dst "$guarded" 2>/dev/null | grep -q . \
      || dialer_running; then
      log "kept the blackhole route for $guarded: something may still send to it (remove it with 'ip route del blackhole $guarded')"
    else
      ip route del blackhole "$guarded" 2>/dev/null || true
      rm -f "$route_marker"
      log "removed the blackhole route for $guarded"
    fi
  fi
  rm -rf "$state"
}

# No packet to the pod and node range may leave the machine: a blackhole route in the root
# namespace, checked rather than assumed. Test hosts in network namespaces get more specific routes.
guard_network() {
  if ! ip route show type blackhole | grep -q "^blackhole $guarded"; then
    # `add`, not `replace`: a route someone else set for the range is never overwritten (the
    # check below then refuses to start if it does not keep packets on the machine).
    ip route add blackhole "$guarded" 2>/dev/null || {
      echo "cannot add 'ip route add blackhole $guarded' (needs CAP_NET_ADMIN); refusing to start a" \
        "cluster whose pod addresses could be routed off this machine" >&2
      exit 1
    }
    # Ours to remove at `down`, once everything that could send to the range has ended.
    touch "$route_marker"
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

# pki: a CA for everything the cluster signs. The API server's serving certificate names the
# first Service IP and the kubernetes.default names, so pods verify it with their ServiceAccount's
# ca.crt (the controller-manager publishes this CA as kube-root-ca.crt).
make_pki() {
  local pki="$1" api_ip="$2"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 2 \
    -subj "/CN=msa-e2e-ca" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/apiserver.key" -out "$pki/apiserver.crt" \
    -days 2 -subj "/CN=kube-apiserver" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -addext "subjectAltName=IP:$api_ip,IP:127.0.0.1,IP:$first_service_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    -addext "extendedKeyUsage=serverAuth" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
  # The API server's client identity towards kubelets (exec, logs, port-forward).
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/kubelet-client.key" \
    -out "$pki/kubelet-client.crt" -days 2 -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -addext "extendedKeyUsage=clientAuth" \
    -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

up() {
  local bin helm argocd_health kwok provisioner node_bin="" api_ip=127.0.0.1 tarballs=()
  bin="$("$root/hack/build-k8s.sh" etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)"
  helm="$("$root/hack/tools.sh" helm)"
  argocd_health="$("$root/hack/tools.sh" argocd-health)"
  kwok="$("$root/hack/tools.sh" kwok)"
  provisioner="$("$root/hack/tools.sh" provisioner)"
  if has_real_node; then
    node_bin="$("$root/hack/build-node.sh")"
    api_ip=$host_ip
    [[ -f "$images/msa-pause.tar" ]] || {
      echo "no images in $images: run 'make images' first (the real node pulls nothing)" >&2
      exit 1
    }
    tarballs=("$images"/*.tar)
  fi
  # What a previous run left first (its `down` also drops the guard route it added), then the
  # guard, before anything that could send to the range starts.
  down
  guard_network
  mkdir -p "$state/pki" "$state/node"
  local pki="$state/pki" api_url="https://$api_ip:$api_port"
  make_pki "$pki" "$api_ip"
  local token kubelet_token proxy_token policy_token
  token="$(openssl rand -hex 16)" kubelet_token="$(openssl rand -hex 16)" proxy_token="$(openssl rand -hex 16)"
  policy_token="$(openssl rand -hex 16)"
  {
    echo "$token,admin,admin,system:masters"
    echo "$kubelet_token,system:node:$node_name,$node_name,system:nodes"
    echo "$proxy_token,system:kube-proxy,kube-proxy"
    # kube-router's policy controller (enforce-policies); its read-only role is granted then.
    echo "$policy_token,system:kube-router,kube-router"
  } >"$pki/tokens.csv"
  # Every write is audited (metadata only), so a test can count what the operator wrote; so is
  # every request of the chart's ServiceAccount, reads and watches too, so the scale benchmark
  # (tests/src/bin/operator_scale.rs) can count the operator's API requests by verb. The log is
  # rotated only past 4 GiB (the API server's default is 100 MB, and the readers read one file:
  # at 1,000 apps it rotated and the counts covered only its end).
  cat >"$state/audit-policy.yaml" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:msa-system:msa-operator"]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
YAML
  cat >"$state/kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: msa-e2e, cluster: {server: "$api_url", certificate-authority: "$pki/ca.crt"}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: msa-e2e, context: {cluster: msa-e2e, user: admin, namespace: default}}]
current-context: msa-e2e
YAML
  local kc="$state/kubeconfig" kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig")
  has_real_node && node_network_up

  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$bin/etcd" --data-dir "$state/etcd" --name msa-e2e \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))" \
    --initial-cluster "msa-e2e=http://127.0.0.1:$((etcd_port + 1))" \
    --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 2))" --unsafe-no-fsync

  log "starting kube-apiserver on $api_ip:$api_port (Services in $service_cidr)"
  # InternalIP first: the default (Hostname first) would resolve node names through the host's
  # resolver. PodNodeSelector and PodTolerationRestriction let a namespace opt into the kwok node.
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,PodNodeSelector,PodTolerationRestriction \
    --kubelet-client-certificate "$pki/kubelet-client.crt" --kubelet-client-key "$pki/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$pki/sa.pub" \
    --service-account-signing-key-file "$pki/sa.key" --service-cluster-ip-range "$service_cidr" \
    --audit-log-path "$state/audit.log" --audit-policy-file "$state/audit-policy.yaml" \
    --audit-log-mode blocking --audit-log-maxsize 4096
  wait_for kube-apiserver 90 "${kubectl[@]}" get --raw /readyz

  # Higher client rates than the defaults (20/s) so a hundred apps roll out quickly; every
  # controller the tests rely on (deployment, replicaset, endpointslice, garbagecollector,
  # serviceaccount, namespace, disruption) is in the default set.
  log "starting kube-controller-manager and kube-scheduler"
  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --service-cluster-ip-range "$service_cidr" \
    --kube-api-qps 200 --kube-api-burst 400 --concurrent-deployment-syncs 10 \
    --concurrent-replicaset-syncs 10 --concurrent-service-endpoint-syncs 10
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
    --kube-api-qps 200 --kube-api-burst 400

  # Storage the way kind and minikube give it: a default StorageClass whose provisioner makes a
  # folder per claim (hack/provisioner), bound once the pod is scheduled.
  log "starting the storage provisioner (StorageClass standard, volumes under $state/volumes)"
  start provisioner "$provisioner" --kubeconfig "$kc" --root "$state/volumes"
  "${kubectl[@]}" apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: msa.dev/hostpath
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
YAML

  local pg_env=""
  if has_real_node; then
    log "starting PostgreSQL on 127.0.0.1 and $host_ip:$pg_port (pods in $pod_cidr log in with a password)"
    pg_env="export MSA_E2E_POSTGRES_URL=$(MSA_PG_STATE="$state/postgres" MSA_PG_PORT=$pg_port \
      MSA_PG_LISTEN="127.0.0.1,$host_ip" MSA_PG_POD_CIDR=$pod_cidr "$root/hack/postgres.sh" up)
export MSA_E2E_POSTGRES_POD_ADDRESS=$host_ip:$pg_port"
  fi

  local taints="[]"
  has_real_node && taints="[{key: $kwok_taint_key, value: $kwok_taint_value, effect: NoSchedule}]"
  log "starting kwok (node kwok-node-0, pods get IPs in $kwok_pod_cidr; taints: $taints)"
  start kwok "$kwok" --kubeconfig "$kc" --config "$here/kwok.yaml" --cidr "$kwok_pod_cidr" \
    --node-ip "$kwok_node_ip" --server-address "127.0.0.1:$kwok_port"
  "${kubectl[@]}" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec:
  podCIDR: $kwok_pod_cidr
  podCIDRs: [$kwok_pod_cidr]
  taints: $taints
YAML
  wait_for kwok 60 \
    "${kubectl[@]}" wait --for=condition=Ready node/kwok-node-0 --timeout=1s

  local node_env=""
  if has_real_node; then
    local started=$SECONDS
    node_up "$kubelet_token" "$proxy_token" "$policy_token" "${tarballs[@]}"
    wait_for kubelet 120 \
      "${kubectl[@]}" wait --for=condition=Ready "node/$node_name" --timeout=1s
    log "node $node_name Ready $((SECONDS - started)) s after containerd started"
    node_env="export MSA_E2E_NODE_READY_SECONDS=$((SECONDS - started))
export MSA_E2E_NODE_NAME=$node_name
export MSA_E2E_NODE_IP=$node_ip
export MSA_E2E_NODE_NS=$node_ns
export MSA_E2E_CTR=\"$node_bin/ctr --address $state/node/containerd.sock -n k8s.io\""
  fi
  wait_for kube-controller-manager 60 \
    "${kubectl[@]}" get serviceaccount default -n default

  cat >"$state/env" <<ENV
export KUBECONFIG=$kc
export MSA_E2E_STATE=$state
export MSA_E2E_KUBECTL=$bin/kubectl
export MSA_E2E_HELM=$helm
export MSA_E2E_ARGOCD_HEALTH=$argocd_health
export MSA_E2E_AUDIT_LOG=$state/audit.log
export MSA_E2E_NODES=$nodes
$node_env
$pg_env
ENV
  log "cluster up ($nodes): KUBECONFIG=$kc (logs in $state)"
  echo "$state/env"
}

restart_node() {
  [[ -f "$state/env" ]] && has_real_node && [[ -e "/run/netns/$node_ns" ]] || {
    echo "no real node running (state $state)" >&2; exit 1; }
  node_bin="$("$root/hack/build-node.sh")"
  api_url="https://$host_ip:$api_port" pki="$state/pki"
  local started=$SECONDS
  node_restart
  # The Node object may still say Ready from before; the kubelet's own health says it is back.
  wait_for kubelet 120 node_exec curl -sf http://127.0.0.1:10248/healthz
  log "node $node_name restarted: kubelet healthy in $((SECONDS - started)) s"
}

# Starts kube-router's network policy controller on the real node, so the NetworkPolicies the
# operator renders are enforced there (until `down`). Separate from `up`: the node test first
# checks what the pods refuse on their own, then turns enforcement on.
enforce_policies() {
  [[ -f "$state/env" ]] && has_real_node && [[ -e "/run/netns/$node_ns" ]] || {
    echo "no real node running (state $state)" >&2; exit 1; }
  node_bin="$("$root/hack/build-node.sh")"
  local bin kubectl
  bin="$("$root/hack/build-k8s.sh" kubectl)"
  kubectl=("$bin/kubectl" --kubeconfig "$state/kubeconfig")
  "${kubectl[@]}" apply -f - >/dev/null <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "msa-e2e:kube-router"}
rules:
- apiGroups: [""]
  resources: [pods, namespaces, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "msa-e2e:kube-router"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "msa-e2e:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:kube-router"}]
YAML
  start_policy_controller
  # Ready once its first full sync wrote the chain every pod's traffic passes.
  wait_for kube-router 60 node_exec iptables -w -S KUBE-ROUTER-FORWARD
  log "kube-router enforces NetworkPolicies on $node_name"
}

case "${1:-}" in
  restart-node) restart_node ;;
  enforce-policies) enforce_policies ;;
  up)
    # A start that fails or is interrupted part-way leaves nothing behind either.
    trap 'exit 130' INT TERM
    trap 'rc=$?; [[ $rc -eq 0 ]] || { log "the cluster did not start (exit $rc): tearing down"; down; }' EXIT
    up ;;
  down) down ;;
  env) [[ -f "$state/env" ]] && echo "$state/env" || { echo "no cluster running (state $state)" >&2; exit 1; } ;;
  *) echo "usage: $0 up|down|env|restart-node|enforce-policies" >&2; exit 2 ;;
esac
