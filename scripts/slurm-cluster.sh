#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (Debian slurm-wlm + munge) for
# tests of the sbatch template. Idempotent.
#
#   scripts/slurm-cluster.sh start   install if missing, configure under $RIDE_SLURM_DIR, start daemons
#   scripts/slurm-cluster.sh stop    stop the daemons
#   scripts/slurm-cluster.sh install|munge   only install the packages / start munged
#   scripts/slurm-cluster.sh common-conf     print the slurm.conf lines all test clusters share
#
# Clients need SLURM_CONF=$RIDE_SLURM_DIR/slurm.conf (written to $RIDE_SLURM_DIR/env).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=env.sh
source "$here/env.sh"
RIDE_SLURM_DIR="${RIDE_SLURM_DIR:-$RIDE_CACHE/slurm}"
CONF="$RIDE_SLURM_DIR/slurm.conf"

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null; then return; fi
  echo "==> installing slurm-wlm and munge (Debian packages)"
  if [ "$(id -u)" != 0 ]; then
    echo "error: installing Slurm needs root (apt-get install slurm-wlm munge)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
}

# The slurm.conf lines every test cluster shares (slurm-two-nodes.sh too):
# root daemons, munge, no cgroups, consumable cores, nodes back on register.
common_conf() {
  cat <<COMMON
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
COMMON
}

# A munge key and daemon (shared by every Slurm cluster on this machine).
munge() {
  mkdir -p "$RIDE_SLURM_DIR" /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chmod 400 /etc/munge/munge.key
  fi
  if ! pgrep -x munged >/dev/null; then
    munged --force
    touch "$RIDE_SLURM_DIR/started-munged"
  fi
}

start() {
  install
  mkdir -p "$RIDE_SLURM_DIR"/{state,spool,munge} /run/munge
  host="$(hostname -s)"
  # The node line as slurmd sees this machine (CPUs, sockets, memory).
  node="$(slurmd -C | head -1)"
  cat > "$CONF" <<CONF
ClusterName=ride
SlurmctldHost=$host
$(common_conf)
StateSaveLocation=$RIDE_SLURM_DIR/state
SlurmdSpoolDir=$RIDE_SLURM_DIR/spool
SlurmctldPidFile=$RIDE_SLURM_DIR/slurmctld.pid
SlurmdPidFile=$RIDE_SLURM_DIR/slurmd.pid
SlurmctldLogFile=$RIDE_SLURM_DIR/slurmctld.log
SlurmdLogFile=$RIDE_SLURM_DIR/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
  munge
  export SLURM_CONF="$CONF"
  [ -f "$RIDE_SLURM_DIR/slurmctld.pid" ] && kill -0 "$(cat "$RIDE_SLURM_DIR/slurmctld.pid")" 2>/dev/null || slurmctld
  [ -f "$RIDE_SLURM_DIR/slurmd.pid" ] && kill -0 "$(cat "$RIDE_SLURM_DIR/slurmd.pid")" 2>/dev/null || slurmd
  for _ in $(seq 1 100); do
    sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc" && break
    sleep 0.2
  done
  if ! sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
    echo "error: the Slurm node did not come up; see $RIDE_SLURM_DIR/slurmctld.log and slurmd.log" >&2
    exit 1
  fi
  echo "export SLURM_CONF=$CONF" > "$RIDE_SLURM_DIR/env"
  echo "slurm: node $host up; source $RIDE_SLURM_DIR/env"
}

stop() {
  for d in slurmd slurmctld; do
    f="$RIDE_SLURM_DIR/$d.pid"
    if [ -f "$f" ]; then
      pid="$(cat "$f")"
      kill "$pid" 2>/dev/null || true
      # slurmctld writes its state on the way out; wait so callers can delete the directory.
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$f"
    fi
  done
  if [ -f "$RIDE_SLURM_DIR/started-munged" ]; then
    pkill -x munged || true
    rm -f "$RIDE_SLURM_DIR/started-munged"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  install) install ;;
  munge) munge ;;
  common-conf) common_conf ;;
  *) echo "usage: $0 start|stop|install|munge|common-conf" >&2; exit 2 ;;
esac
