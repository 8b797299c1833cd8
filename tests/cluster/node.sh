#!/usr/bin/env bash
# The test cluster's real node: containerd, runc, the CNI bridge, kubelet and kube-proxy
# (nftables mode), all in a network namespace of their own. Called by cluster.sh, which sets the
# variables below; see tests/README.md for the layout and ../shared/research/real-node.md for why
# each non-default setting is needed on this kind of machine.
#
#   root namespace                          node namespace "msa-node"
#   ──────────────                          ───────────────────────────────────────────────
#   kube-apiserver 198.18.250.1:26443 ─veth─ 198.18.250.2 (InternalIP, NodePorts, kubelet :10250)
#   route 198.18.160.0/24 (pods) ─────────►  bridge msa-cni0 198.18.160.1 ─► pods 198.18.160.x
#   route 198.19.0.0/16 (services) ───────►  kube-proxy's nftables DNAT
#   blackhole 198.18.0.0/15                  no default route; nft table msa_guard drops any
#   ip_forward stays 0                       packet to or from outside 198.18.0.0/15 (counted)
#
# Expects from cluster.sh: state, node_bin (node binaries), pki, api_url, node_name, node_ns,
# node_ip, host_ip, pod_cidr, pod_gateway, service_cidr, resolver_ip, cluster_dns, sandbox_image,
# and its log, start, stop_component and wait_for functions.
set -euo pipefail

node_dir() { echo "$state/node"; }
node_exec() { nsenter --net="/run/netns/$node_ns" -- "$@"; }

# Kernel settings the kubelet changes (it sets what a production node wants); restored on down.
readonly kubelet_sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
sysctl_file() { echo "${MSA_CLUSTER_SYSCTLS:-${TMPDIR:-/tmp}/msa-cluster.sysctls}"; }

save_sysctls() {
  # Kept outside the state folder and never overwritten: after an interrupted run it still holds
  # the values from before the first start.
  [[ -f "$(sysctl_file)" ]] && return
  local name
  for name in "${kubelet_sysctls[@]}"; do
    echo "$name=$(sysctl -n "$name")"
  done >"$(sysctl_file)"
}

# Folders outside the state folder that the kubelet, containerd's shims and libcni use whatever
# their configuration says; each is removed on down only if it did not exist before the first up.
readonly fixed_dirs=(/var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet
  /var/lib/cni/results /var/lib/cni /run/containerd/s /run/containerd)
host_paths_file() { echo "${MSA_CLUSTER_HOST_PATHS:-${TMPDIR:-/tmp}/msa-cluster.host-paths}"; }

save_host_paths() {
  [[ -f "$(host_paths_file)" ]] && return
  local dir
  for dir in "${fixed_dirs[@]}"; do [[ -e "$dir" ]] && echo "$dir"; done >"$(host_paths_file)"
  return 0
}

# Removes what the node wrote into those folders since it started (the marker file's time), then
# the folders it created.
clean_host_paths() {
  local marker="$1" f n=0 dir
  [[ -f "$marker" ]] || return 0
  while IFS= read -r f; do
    rm -f "$f" && n=$((n + 1))
  done < <(find /var/log/containers /var/lib/cni/results /var/lib/kubelet/device-plugins /run/containerd/s \
             -mindepth 1 -maxdepth 1 -newer "$marker" 2>/dev/null)
  [[ $n -gt 0 ]] && log "removed $n container log links, CNI cache entries and shim sockets"
  [[ -f "$(host_paths_file)" ]] || return 0
  for dir in "${fixed_dirs[@]}"; do
    grep -qxF "$dir" "$(host_paths_file)" || rmdir "$dir" 2>/dev/null || true
  done
  rm -f "$(host_paths_file)"
}

restore_sysctls() {
  local file line name value now
  file="$(sysctl_file)"
  [[ -f "$file" ]] || return 0
  while IFS= read -r line; do
    name="${line%%=*}" value="${line#*=}"
    now="$(sysctl -n "$name" 2>/dev/null || true)"
    if [[ "$now" != "$value" ]]; then
      sysctl -q -w "$name=$value" && log "restored $name=$value (was $now)"
    fi
  done <"$file"
  rm -f "$file"
}

node_network_up() {
  local link=msa-node0
  mkdir -p "$(node_dir)"
  ip netns add "$node_ns"
  # IPv4 only: no link-local IPv6 chatter for the guard to count (per-namespace settings, and a
  # per-link one that goes away with the link).
  node_exec sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  # No IGMP reports for link-local groups (the bridge's 224.0.0.22 reports would be the only
  # packets the guard below ever drops).
  node_exec sysctl -q -w net.ipv4.igmp_link_local_mcast_reports=0
  ip link add "$link" type veth peer name uplink netns "$node_ns"
  sysctl -q -w "net.ipv6.conf.$link.disable_ipv6=1"
  ip addr add "$host_ip/30" dev "$link"
  ip link set "$link" up
  node_exec ip addr add "$node_ip/30" dev uplink
  node_exec ip link set uplink up
  node_exec ip link set lo up
  # The more specific routes inside the blackholed 198.18.0.0/15 lead to the node only.
  ip route add "$pod_cidr" via "$node_ip" dev "$link"
  ip route add "$service_cidr" via "$node_ip" dev "$link"
  node_exec sysctl -q -w net.ipv4.ip_forward=1
  # Bridged pod-to-pod replies must pass conntrack, or a Service's DNAT is not undone.
  node_exec sysctl -q -w net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=0
  node_exec nft -f - <<NFT
table inet msa_guard {
  set allowed { type ipv4_addr; flags interval; elements = { 127.0.0.0/8, 198.18.0.0/15 } }
  set dropped_to { type ipv4_addr; size 1024; flags dynamic; }
  set dropped_from { type ipv4_addr; size 1024; flags dynamic; }
  chain forward {
    type filter hook forward priority -300; policy accept;
    meta nfproto ipv6 counter name dropped_v6 drop
    ip daddr != @allowed add @dropped_to { ip daddr } counter name dropped_out drop
    ip saddr != @allowed add @dropped_from { ip saddr } counter name dropped_in drop
  }
  chain output {
    type filter hook output priority -300; policy accept;
    meta nfproto ipv6 oifname != "lo" counter name dropped_v6 drop
    ip daddr != @allowed add @dropped_to { ip daddr } counter name dropped_out drop
  }
  counter dropped_out {}
  counter dropped_in {}
  counter dropped_v6 {}
}
NFT
  echo "nameserver $resolver_ip" >"$(node_dir)/resolv.conf"
  log "node network: namespace $node_ns, node $node_ip, pods $pod_cidr, services $service_cidr (routed to the node)"
}

# What the guard dropped: every counter should stay at 0 — nothing tried to leave 198.18.0.0/15.
guard_counters() {
  [[ -e "/run/netns/$node_ns" ]] || return 0
  node_exec nft list counters table inet msa_guard 2>/dev/null \
    | awk '/counter/ {name=$2} /packets/ {print "  " name ": " $2 " packets"}'
  local set
  for set in dropped_to dropped_from; do
    node_exec nft list set inet msa_guard "$set" 2>/dev/null \
      | sed -n 's/.*elements = { \(.*\) }.*/  '"$set"': \1/p'
  done
}

write_node_configs() {
  local d; d="$(node_dir)"
  mkdir -p "$d/cni" "$d/kubelet" "$d/pod-logs"
  cat >"$d/containerd.toml" <<TOML
version = 3
root = "$d/containerd/root"
state = "$d/containerd/state"
# Nothing from the host's /etc/containerd, and nothing written to /opt.
imports = []
[plugins.'io.containerd.internal.v1.opt']
  path = "$d/containerd/opt"
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails in runc.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$d/cni"
    max_conf_num = 1
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$d/runc"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$sandbox_image"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
TOML
  # Pods reach only 198.18.0.0/15 (other pods, the node, Services, the API server): no default
  # route, no masquerade.
  cat >"$d/cni/10-msa-pods.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "msa-pods",
  "plugins": [{
    "type": "bridge", "bridge": "msa-cni0", "isGateway": true, "isDefaultGateway": false,
    "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$d/cni-ipam",
      "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]],
      "routes": [{"dst": "198.18.0.0/15"}]
    }
  }]
}
JSON
  cat >"$d/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine's init keeps cgroup v1 hierarchies; 1.36 only warns with this set.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$d/containerd.sock
address: $node_ip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# No DNS server runs; pods get a resolver address inside 198.18.0.0/15, never the host's.
resolvConf: $d/resolv.conf
clusterDNS: [$cluster_dns]
clusterDomain: cluster.local
podLogsDir: $d/pod-logs
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute thresholds: the node shares the host's disk, where even 1% can be gigabytes that a
# developer's other builds use up (pods were evicted at 2.7 GB free of 252 GB).
evictionHard: {memory.available: 100Mi, nodefs.available: 512Mi, imagefs.available: 512Mi, nodefs.inodesFree: 1%}
maxPods: 110
YAML
  cat >"$d/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: $node_name
clientConnection: {kubeconfig: $d/kube-proxy.kubeconfig}
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: $pod_cidr
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$node_ip/32"]
# The conntrack table size is global to the machine: leave it and its timeouts alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# kubeconfig_for <file> <token>
kubeconfig_for() {
  cat >"$1" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: msa-e2e, cluster: {server: "$api_url", certificate-authority: "$pki/ca.crt"}}]
users: [{name: node, user: {token: "$2"}}]
contexts: [{name: msa-e2e, context: {cluster: msa-e2e, user: node}}]
current-context: msa-e2e
YAML
}

# node_up <kubelet token> <kube-proxy token> <kube-router token> <image tarball>...
node_up() {
  local kubelet_token="$1" proxy_token="$2" policy_token="$3"; shift 3
  local d; d="$(node_dir)"
  save_host_paths
  touch "$d/started"
  write_node_configs
  kubeconfig_for "$d/kubelet.kubeconfig" "$kubelet_token"
  kubeconfig_for "$d/kube-proxy.kubeconfig" "$proxy_token"
  kubeconfig_for "$d/kube-router.kubeconfig" "$policy_token"
  start_containerd
  local tarball started=$SECONDS
  for tarball in "$@"; do
    "$node_bin/ctr" --address "$d/containerd.sock" -n k8s.io images import --local "$tarball" >/dev/null 2>>"$state/ctr.log" \
      || { echo "ctr images import $tarball failed" >&2; return 1; }
  done
  log "imported $# images into containerd's k8s.io namespace in $((SECONDS - started)) s"
  save_sysctls
  start_kubelet_and_proxy
}

start_containerd() {
  local d; d="$(node_dir)"
  log "starting containerd in $node_ns"
  PATH="$node_bin:$PATH" start containerd nsenter --net="/run/netns/$node_ns" -- "$node_bin/containerd" --config "$d/containerd.toml"
  wait_for containerd 60 "$node_bin/ctr" --address "$d/containerd.sock" version
}

start_kubelet_and_proxy() {
  local d; d="$(node_dir)"
  log "starting kubelet and kube-proxy in $node_ns (node $node_name at $node_ip)"
  start kubelet nsenter --net="/run/netns/$node_ns" -- "$node_bin/kubelet" \
    --config "$d/kubelet.yaml" --kubeconfig "$d/kubelet.kubeconfig" --root-dir "$d/kubelet" \
    --cert-dir "$d/kubelet-pki" --hostname-override "$node_name" --node-ip "$node_ip" \
    --node-labels "msa.dev/node=real"
  start kube-proxy nsenter --net="/run/netns/$node_ns" -- "$node_bin/kube-proxy" --config "$d/kube-proxy.yaml"
}

# kube-router as a NetworkPolicy controller only (no routing, no service proxy: the bridge and
# kube-proxy do those): iptables rules and ipsets in the node's namespace, which go with it.
# Every listener off: health and metrics ports 0.
start_policy_controller() {
  local d; d="$(node_dir)"
  log "starting kube-router (NetworkPolicy controller) in $node_ns"
  PATH="$node_bin:$PATH" start kube-router nsenter --net="/run/netns/$node_ns" -- "$node_bin/kube-router" \
    --kubeconfig "$d/kube-router.kubeconfig" --hostname-override "$node_name" \
    --run-firewall=true --run-router=false --run-service-proxy=false \
    --service-cluster-ip-range "$service_cidr" --health-port 0 --metrics-port 0 \
    --iptables-sync-period 5s --v 1
}

# The node loses power and comes back: every process of the node and its pods ends at once (no
# SIGTERM, nothing drains), runtime state is gone as a reboot clears /run, and what is on disk
# stays (images, the kubelet's folder, and the volumes, which live outside the node's folder).
node_restart() {
  local d; d="$(node_dir)"
  node_processes_down
  rm -rf "$d/containerd/state"
  start_containerd
  start_kubelet_and_proxy
}

# Everything the node left, found by what it is rather than by what we remember starting, so an
# interrupted run is cleaned too. Prints what it removed.
node_down() {
  local d; d="$(node_dir)"
  node_processes_down
  if [[ -e "/run/netns/$node_ns" ]]; then
    log "guard counters (packets dropped on their way off 198.18.0.0/15):"
    guard_counters >&2
    ip netns delete "$node_ns"
    log "deleted network namespace $node_ns (its bridge, veth, nft tables and routes with it)"
  fi
  ip link delete msa-node0 2>/dev/null || true
  clean_host_paths "$d/started"
  restore_sysctls
}

# Every process of the node and its pods, their mounts and cgroups; the network stays.
node_processes_down() {
  local d pid cg n=0
  d="$(node_dir)"
  stop_component kube-router
  stop_component kubelet
  stop_component kube-proxy
  # Containers outlive the kubelet (their shims hold them): end every process in the pods' cgroups.
  for cg in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$cg" ]] || continue
    for pid in $(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u); do
      kill -9 "$pid" 2>/dev/null && n=$((n + 1))
    done
  done
  [[ $n -gt 0 ]] && log "ended $n container processes"
  stop_component containerd
  n=0
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $d/containerd.sock" 2>/dev/null); do
    kill -9 "$pid" 2>/dev/null && n=$((n + 1))
  done
  [[ $n -gt 0 ]] && log "ended $n containerd shims"
  # Mounts under the node's folder (overlay roots, shm, projected tokens, pod network namespaces),
  # deepest first.
  n=0
  while IFS= read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    n=$((n + 1))
  done < <(awk -v d="$d/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  [[ $n -gt 0 ]] && log "unmounted $n mounts under $d"
  # The kubelet's cgroups in every v1 hierarchy, children first (they are empty now).
  n=0
  for cg in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$cg" ]] || continue
    while IFS= read -r dir; do
      for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$dir" 2>/dev/null && break; sleep 0.2; done
    done < <(find "$cg" -depth -type d)
    n=$((n + 1))
  done
  [[ $n -gt 0 ]] && log "removed the kubepods cgroups in $n hierarchies"
  return 0
}
