#!/usr/bin/env bash
# A real two-node Docker Swarm on this host, for tests/it/docker/swarm_nodes.rs:
# two network namespaces, each joined to a bridge in the root namespace by a
# veth pair, each running a dockerd of its own (own data root, exec root,
# pidfile and socket /run/deploy-code-node<N>.sock). node1 initialises a
# Swarm of their own (apart from the root engine's), node2 joins it.
#
#   .ci/swarm-nodes.sh up      # prints the export line for the tests
#   .ci/swarm-nodes.sh down    # stops both engines, removes namespaces, bridge and data
#   .ci/swarm-nodes.sh stop N  # stops node N's engine (its tasks stop with it)
#   .ci/swarm-nodes.sh kill N  # a crash: SIGKILL to everything in node N's namespace
#   .ci/swarm-nodes.sh start N # starts node N's engine again (it rejoins)
set -euo pipefail

BRIDGE=dcswarm0
NET=10.231.7
NODES=(1 2)

ns() { echo "dc-swarm-node$1"; }
sock() { echo "/run/deploy-code-node$1.sock"; }
pidfile() { echo "/run/deploy-code-node$1.pid"; }
ip_of() { echo "$NET.1$1"; }
dk() { local n=$1; shift; docker -H "unix://$(sock "$n")" "$@"; }

log() { printf '==> swarm-nodes: %s\n' "$*" >&2; }

engine_pid() {
  local f
  f=$(pidfile "$1")
  [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && cat "$f"
}

stop_engine() {
  local n=$1 pid
  pid=$(engine_pid "$n" || true)
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

# A node crash: SIGKILL to every process in the node's namespace (its
# engine, containerd, shims and tasks), so that the manager learns of it only
# from missed heartbeats.
crash() {
  local n=$1
  ip netns pids "$(ns "$n")" | xargs -r kill -9
  for _ in $(seq 1 50); do [ -z "$(ip netns pids "$(ns "$n")")" ] && break; sleep 0.1; done
  rm -f "$(pidfile "$n")"
}

start_engine() {
  local n=$1
  mkdir -p "/var/lib/deploy-code-node$n" "/run/deploy-code-node$n"
  # The network namespace, the host name and the mounts are the node's own
  # (a resolver that answers at once: the nodes reach no registry, and a
  # task's image pull then fails fast and the node's own copy runs):
  # /sys is mounted afresh for the namespace (the overlay network's bridge
  # needs it) with the host's cgroup hierarchies bound back under it (the
  # engine's cgroups go under a parent of its own); files are the host's. It
  # sets no iptables rules (the root engine's are left alone) and makes no
  # default bridge. node2 declares one GPU (a discrete Swarm generic
  # resource, as deploy-code reserves it), so
  # that a service asking for a GPU fits on node2 alone.
  local extra=()
  [ "$n" = 2 ] && extra=(--node-generic-resource "NVIDIA-GPU=1")
  nsenter --net="/run/netns/$(ns "$n")" -- unshare --mount --uts --propagation slave -- sh -c '
    hold="/run/deploy-code-node$0/cgroup"
    mkdir -p "$hold" && mount --rbind /sys/fs/cgroup "$hold" &&
    mount -t sysfs sysfs /sys && mount --rbind "$hold" /sys/fs/cgroup &&
    echo "nameserver 127.0.0.1" > "/run/deploy-code-node$0/resolv.conf" &&
    mount --bind "/run/deploy-code-node$0/resolv.conf" /etc/resolv.conf &&
    hostname "deploy-code-node$0" && exec setsid dockerd "$@"' "$n" \
    --data-root "/var/lib/deploy-code-node$n" \
    --exec-root "/run/deploy-code-node$n" \
    --pidfile "$(pidfile "$n")" \
    --host "unix://$(sock "$n")" \
    --cgroup-parent "/deploy-code-node$n" \
    --iptables=false --ip-masq=false --bridge=none \
    "${extra[@]}" \
    >"/tmp/deploy-code-node$n.log" 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    dk "$n" info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  log "node$n's dockerd did not start:"; tail -30 "/tmp/deploy-code-node$n.log" >&2
  return 1
}

up() {
  modprobe veth 2>/dev/null || true
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  # Bridged frames pass the host's FORWARD chain (br_netfilter), whose policy
  # the root engine sets to DROP: let the nodes talk to each other.
  iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null \
    || iptables -I FORWARD 1 -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT
  for n in "${NODES[@]}"; do
    local name
    name=$(ns "$n")
    if ! ip netns list | grep -qw "$name"; then
      ip netns add "$name"
      ip link add "dcsw$n-h" type veth peer name "dcsw$n-c"
      ip link set "dcsw$n-c" netns "$name"
      ip link set "dcsw$n-h" master "$BRIDGE" up
      ip netns exec "$name" ip addr add "$(ip_of "$n")/24" dev "dcsw$n-c"
      ip netns exec "$name" ip link set "dcsw$n-c" up
      ip netns exec "$name" ip link set lo up
      ip netns exec "$name" ip route add default via "$NET.1"
    fi
    engine_pid "$n" >/dev/null || start_engine "$n"
  done
  if [ "$(dk 1 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "node1: swarm init --advertise-addr $(ip_of 1)"
    dk 1 swarm init --advertise-addr "$(ip_of 1)" --listen-addr "$(ip_of 1):2377" >/dev/null
  fi
  if [ "$(dk 2 info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
    log "node2: swarm join $(ip_of 1):2377"
    dk 2 swarm join --advertise-addr "$(ip_of 2)" --listen-addr "$(ip_of 2):2377" \
      --token "$(dk 1 swarm join-token -q worker)" "$(ip_of 1):2377" >/dev/null
  fi
  for _ in $(seq 1 60); do
    [ "$(dk 1 node ls --filter role=worker --format '{{.Status}}' | grep -c Ready)" -ge 1 ] && break
    sleep 0.5
  done
  dk 1 node ls >&2
  echo "export DEPLOY_CODE_SWARM_NODES=$(sock 1)"
}

down() {
  for n in "${NODES[@]}"; do
    if engine_pid "$n" >/dev/null; then
      # Services of the test swarm go with it; leave the swarm so that its
      # state does not outlive the cluster.
      dk "$n" swarm leave --force >/dev/null 2>&1 || true
    fi
    stop_engine "$n"
    ip netns del "$(ns "$n")" 2>/dev/null || true
    ip link del "dcsw$n-h" 2>/dev/null || true
    # What the engine mounted (its namespaces' files, its layers) is
    # unmounted before its files are removed.
    mount | awk -v n="deploy-code-node$n" '$3 ~ n {print $3}' | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "/var/lib/deploy-code-node$n" "/run/deploy-code-node$n" "$(sock "$n")" "$(pidfile "$n")"
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -j ACCEPT 2>/dev/null; do :; done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop) stop_engine "${2:?node number}" ;;
  kill) crash "${2:?node number}" ;;
  start) start_engine "${2:?node number}" ;;
  *) echo "usage: $0 up|down|stop N|kill N|start N" >&2; exit 2 ;;
esac
