#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying the
# templates: munged, slurmctld and slurmd, with 2 fake GPUs declared as GRES so that
# GPU jobs schedule (TensorFlow finds no GPU and runs on the CPU).
#   scripts/local_slurm.sh start|stop|status      (state in $HPCCNN_SLURM_DIR)
# Then: export SLURM_CONF=$HPCCNN_SLURM_DIR/slurm.conf  and use sbatch/srun/squeue.
set -euo pipefail
D=${HPCCNN_SLURM_DIR:-/tmp/hpccnn-slurm}
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))

start() {
  mkdir -p "$D"/{state,spool,log,dev}
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged
  fi
  for i in 0 1; do [ -c "$D/dev/fakegpu$i" ] || mknod "$D/dev/fakegpu$i" c 1 3; done
  cat > "$D/slurm.conf" <<CONF
ClusterName=hpccnn-local
SlurmctldHost=$host
AuthType=auth/munge
# a requeued job may start again after cred_expire seconds (default 120): short on this test cluster
AuthInfo=cred_expire=10
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldPort=${HPCCNN_SLURMCTLD_PORT:-6817}
SlurmdPort=${HPCCNN_SLURMD_PORT:-6818}
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MaxArraySize=1001
KillWait=5
InactiveLimit=0
MinJobAge=600
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$host Name=gpu File=$D/dev/fakegpu[0-1]" > "$D/gres.conf"
  export SLURM_CONF="$D/slurm.conf"
  pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld -f "$SLURM_CONF"
  pgrep -x slurmd >/dev/null || /usr/sbin/slurmd -f "$SLURM_CONF"
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "local SLURM cluster up: export SLURM_CONF=$SLURM_CONF"; return 0
    fi
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  echo "local SLURM cluster did not come up; see $D/log/" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  for _ in $(seq 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
  echo "local SLURM cluster stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF="$D/slurm.conf" sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
