#!/usr/bin/env bash
# A two-node Slurm cluster on this machine for multi-node tests: each slurmd
# runs in its own network namespace (ride-n1, ride-n2) with its own address
# (10.231.0.11, .12) on a bridge (ridebr0, 10.231.0.1) where slurmctld
# listens, so a job's ranks rendezvous over a real (virtual) network and a
# node can be cut off. Traffic stays between these hosts; nothing is routed
# elsewhere. Needs root (namespaces, links) and Debian's slurm-wlm + munge
# (scripts/slurm-cluster.sh installs them). Ports differ from the
# single-node cluster's, so both can run at once.
#
#   scripts/slurm-two-nodes.sh start        configure under $RIDE_SLURM2_DIR, start the daemons
#   scripts/slurm-two-nodes.sh stop         stop them, remove the namespaces and the bridge
#   scripts/slurm-two-nodes.sh cut n2       take node n2's link down (a lost node)
#   scripts/slurm-two-nodes.sh heal n2      bring it back
#
# Clients need SLURM_CONF=$RIDE_SLURM2_DIR/slurm.conf (written to $RIDE_SLURM2_DIR/env).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
RIDE_SLURM2_DIR="${RIDE_SLURM2_DIR:-$RIDE_CACHE/slurm2}"
CONF="$RIDE_SLURM2_DIR/slurm.conf"
BRIDGE=ridebr0
NET=10.231.0

link_of() { # n1 → rv1
  case "$1" in
    n1) echo rv1 ;;
    n2) echo rv2 ;;
    *) echo "error: no node '$1' (n1 or n2)" >&2; exit 2 ;;
  esac
}

network_up() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || {
    ip link add "$BRIDGE" type bridge
    ip addr add "$NET.1/24" dev "$BRIDGE"
  }
  ip link set "$BRIDGE" up
  for i in 1 2; do
    ip netns list | grep -qw "ride-n$i" || ip netns add "ride-n$i"
    if ! ip link show "rv$i" >/dev/null 2>&1; then
      ip link add "rv$i" type veth peer name "rv${i}p"
      ip link set "rv${i}p" netns "ride-n$i"
      ip netns exec "ride-n$i" ip addr add "$NET.1$i/24" dev "rv${i}p"
    fi
    ip link set "rv$i" master "$BRIDGE"
    ip link set "rv$i" up
    ip netns exec "ride-n$i" ip link set "rv${i}p" up
    ip netns exec "ride-n$i" ip link set lo up
  done
}

network_down() {
  for i in 1 2; do
    ip netns del "ride-n$i" 2>/dev/null || true
    ip link del "rv$i" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

start() {
  if [ "$(id -u)" != 0 ]; then
    echo "error: the two-node cluster needs root (network namespaces)" >&2
    exit 1
  fi
  "$here/slurm-cluster.sh" install
  if ! command -v ip >/dev/null || ! command -v nsenter >/dev/null; then
    echo "==> installing iproute2 and util-linux (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 util-linux >/dev/null
  fi
  mkdir -p "$RIDE_SLURM2_DIR/state"
  network_up
  cat > "$CONF" <<CONF
ClusterName=ride2
SlurmctldHost=$(hostname -s)($NET.1)
SlurmctldPort=6827
SlurmdPort=6828
$("$here/slurm-cluster.sh" common-conf)
# A lost node is declared DOWN after 10 s (stock: 300 s).
SlurmdTimeout=10
StateSaveLocation=$RIDE_SLURM2_DIR/state
SlurmdSpoolDir=$RIDE_SLURM2_DIR/spool-%n
SlurmctldPidFile=$RIDE_SLURM2_DIR/slurmctld.pid
SlurmdPidFile=$RIDE_SLURM2_DIR/slurmd-%n.pid
SlurmctldLogFile=$RIDE_SLURM2_DIR/slurmctld.log
SlurmdLogFile=$RIDE_SLURM2_DIR/slurmd-%n.log
NodeName=n1 NodeAddr=$NET.11 CPUs=1 RealMemory=1000 State=UNKNOWN
NodeName=n2 NodeAddr=$NET.12 CPUs=1 RealMemory=1000 State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
  "$here/slurm-cluster.sh" munge
  export SLURM_CONF="$CONF"
  running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
  running "$RIDE_SLURM2_DIR/slurmctld.pid" || slurmctld
  for i in 1 2; do
    # nsenter enters only the network namespace: `ip netns exec` would also
    # remount /sys, hiding the cgroup file system slurmd needs.
    running "$RIDE_SLURM2_DIR/slurmd-n$i.pid" || nsenter --net="/var/run/netns/ride-n$i" slurmd -N "n$i"
  done
  for _ in $(seq 1 100); do
    [ "$(sinfo -h -o %T 2>/dev/null | grep -cE "idle|mix|alloc")" = 1 ] && \
      [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE "idle|mix|alloc")" = 2 ] && break
    sleep 0.2
  done
  if [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE "idle|mix|alloc")" != 2 ]; then
    echo "error: the two Slurm nodes did not come up; see $RIDE_SLURM2_DIR/*.log" >&2
    exit 1
  fi
  echo "export SLURM_CONF=$CONF" > "$RIDE_SLURM2_DIR/env"
  echo "slurm: nodes n1 ($NET.11) and n2 ($NET.12) up; source $RIDE_SLURM2_DIR/env"
}

stop() {
  for f in "$RIDE_SLURM2_DIR"/slurmd-n1.pid "$RIDE_SLURM2_DIR"/slurmd-n2.pid "$RIDE_SLURM2_DIR"/slurmctld.pid; do
    if [ -f "$f" ]; then
      pid="$(cat "$f")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$f"
    fi
  done
  network_down
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  cut) ip link set "$(link_of "${2:-}")" down ;;
  heal) ip link set "$(link_of "${2:-}")" up ;;
  *) echo "usage: $0 start|stop|cut NODE|heal NODE" >&2; exit 2 ;;
esac
