#!/usr/bin/env bash
# A private, single-node SLURM (munged + slurmctld + slurmd) living entirely in one directory:
# its own munge key and socket, its own slurm.conf, state, spool, logs and ports.  Nothing in
# /etc is touched, so it can run beside a system SLURM and is removed with the directory.
#
#   sudo bash cluster/slurm/single-node.sh start DIR [--ctld-port P] [--slurmd-port P]
#                                                    [--cpus N] [--memory MB]
#   export SLURM_CONF=DIR/slurm.conf        # then sbatch/squeue/dask-jobqueue use it
#   sudo bash cluster/slurm/single-node.sh stop DIR
#
# Needs root and the Debian packages installed by cluster/slurm/setup.sh.  The controller and the
# node daemon listen on 127.0.0.1 only (SlurmctldHost/NodeAddr), jobs run as the submitting user.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 2 ] || usage
action=$1; dir=$2; shift 2
ctld_port=6817; slurmd_port=6818
cpus=$(nproc); memory=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) / 2 ))
node=jacntk-node

while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "option '$1' needs a value"
  case $1 in
    --ctld-port) ctld_port=$2 ;;
    --slurmd-port) slurmd_port=$2 ;;
    --cpus) cpus=$2 ;;
    --memory) memory=$2 ;;
    *) die "unknown option '$1'" ;;
  esac
  shift 2
done
for v in ctld_port slurmd_port cpus memory; do require_uint "--${v//_/-}" "${!v}"; done

case $action in
  start)
    [ "$(id -u)" = 0 ] || die "must run as root (slurmd starts jobs as their users)"
    for c in munged slurmctld slurmd sinfo; do
      command -v "$c" >/dev/null || die "'$c' not found: run 'sudo bash cluster/slurm/setup.sh'"
    done
    if [ -s "$dir/slurmctld.pid" ] && is_running "$(cat "$dir/slurmctld.pid")"; then
      die "'$dir' already holds a running SLURM (stop it first)"
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    chmod 0700 "$dir"
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    # munge: private key, socket and seed in $dir (munged insists on strict permissions).
    [ -s "$dir/munge.key" ] || { head -c 1024 /dev/urandom > "$dir/munge.key"; }
    chmod 0400 "$dir/munge.key"
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
      --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
      --seed-file="$dir/munged.seed"
    cat > "$dir/slurm.conf" <<CONF
# Written by cluster/slurm/single-node.sh: one node, loopback only, no accounting, no cgroups.
ClusterName=jacntk
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
KillWait=5
InactiveLimit=0
NodeName=$node NodeHostname=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF="$dir/slurm.conf"
    fail() { bash "$0" stop "$dir" >/dev/null 2>&1 || true; die "$1 failed to start; see $dir/log"; }
    slurmctld -c -i -f "$SLURM_CONF" || fail slurmctld
    slurmd -N "$node" -f "$SLURM_CONF" || fail slurmd
    for _ in $(seq 300); do   # at most 30 s for the node to register
      state=$(sinfo -h -N -o %t 2>/dev/null || true)
      [ "$state" = idle ] && { echo "SLURM_CONF=$SLURM_CONF"; exit 0; }
      sleep 0.1
    done
    echo "single-node.sh: node did not become idle (state '${state:-none}'); logs in $dir/log" >&2
    bash "$0" stop "$dir" || true
    exit 1
    ;;
  stop)
    [ -d "$dir" ] || die "no such directory '$dir'"
    [ -e "$dir/slurm.conf" ] || die "'$dir' holds no single-node SLURM (no slurm.conf)"
    if [ -s "$dir/slurmctld.pid" ] && command -v scancel >/dev/null; then
      SLURM_CONF="$dir/slurm.conf" scancel --full --user="$(id -un)" 2>/dev/null || true
    fi
    stop_pidfile "$dir/slurmd.pid" slurmd
    stop_pidfile "$dir/slurmctld.pid" slurmctld
    stop_pidfile "$dir/munged.pid" munged
    ;;
  *) die "unknown action '$action' (start or stop)" ;;
esac
