#!/usr/bin/env bash
# Stops the cluster scripts/slurm-up.sh started in DIR (default /tmp/aserpc-slurm): every job is
# cancelled first, then slurmd and slurmctld. munged is left running (other users of it).
set -uo pipefail
DIR=${1:-/tmp/aserpc-slurm}
export SLURM_CONF="$DIR/slurm.conf"
scancel --full --quiet --user="$(id -un)" 2>/dev/null
for p in slurmd slurmctld; do
  pid=$(cat "$DIR/run/$p.pid" 2>/dev/null) && kill "$pid" 2>/dev/null
done
sleep 1
pkill -f "slurmd -f $DIR" 2>/dev/null
pkill -f "slurmctld -f $DIR" 2>/dev/null
exit 0
