#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the tests and for trying the
# manager's srun spawn commands: munged, slurmctld and slurmd as root, all
# state in DIR (default /tmp/aserpc-slurm). Prints `export SLURM_CONF=...`.
# Needs root and Debian's slurm-wlm and munge (scripts/bootstrap.sh).
# Stop it with scripts/slurm-down.sh DIR.
set -euo pipefail
DIR=${1:-/tmp/aserpc-slurm}
HOST=$(hostname -s)
# At least 8 CPUs for the node even on a smaller machine (config_overrides below): the tests run
# several one-CPU worker steps at once, which sleep or compute little.
CPUS=${ASERPC_SLURM_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}
if [ "$(id -u)" != 0 ]; then echo "slurm-up: needs root (slurmd runs job steps as their user)" >&2; exit 2; fi
for b in munged slurmctld slurmd sinfo srun; do
  command -v "$b" >/dev/null || { echo "slurm-up: $b not found (apt-get install slurm-wlm munge)" >&2; exit 2; }
done
mkdir -p "$DIR"/{state,spool,log,run}
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
if ! pgrep -x munged >/dev/null; then
  if id munge >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
  else
    munged --force
  fi
fi
cat > "$DIR/slurm.conf" <<CONF
ClusterName=aserpc
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
SlurmdParameters=config_overrides
KillWait=5
NodeName=$HOST CPUs=$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF="$DIR/slurm.conf"
pkill -f "slurmctld -f $DIR" 2>/dev/null || true
pkill -f "slurmd -f $DIR" 2>/dev/null || true
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 1 60); do
  if [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ]; then
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
  fi
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  sleep 0.5
done
echo "slurm-up: the node did not become idle; $DIR/log:" >&2
tail -20 "$DIR"/log/*.log >&2 || true
exit 1
