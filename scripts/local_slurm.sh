#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the tests and for trying the templates.
#
#   scripts/local_slurm.sh start [--nodes N] [--cpus-per-node C] [--link-gbit X]
#   scripts/local_slurm.sh link [--gbit X | --unshaped] [--node nK --down | --node nK --up]
#   scripts/local_slurm.sh stop | status
#
# One node (the default): munged, slurmctld and slurmd on this host, as it is.
# N >= 2 nodes: each node is a network namespace with its own hostname (n1..nN) joined to a
# bridge by a veth link, running its own `slurmd -N nK`, pinned to its own share of the cores
# and given its share of the memory; slurmctld listens on the bridge. Each node also has a
# second interface, eth1, whose address (the same subnet on every node) leads nowhere, as the
# extra interfaces of real nodes often do. --link-gbit shapes every node's link with tc tbf.
# Every node declares 2 fake GPUs as GRES, so GPU jobs schedule (TensorFlow finds none).
# State lives in $HPCCNN_SLURM_DIR (default /tmp/hpccnn-slurm); `stop` removes what `start`
# made and stops only the daemons it started, by their pid files.
# Then: export SLURM_CONF=$HPCCNN_SLURM_DIR/slurm.conf  and use sbatch/srun/squeue.
set -euo pipefail
D=${HPCCNN_SLURM_DIR:-/tmp/hpccnn-slurm}
NET=${HPCCNN_SLURM_NET:-10.77}       # the bridge's /24 is $NET.0.0; node k is $NET.0.(10+k)
DEAD=${HPCCNN_SLURM_DEAD_NET:-10.78}  # eth1's subnet: on every node, connected to nothing
BRIDGE=hpccnnbr0
host=$(hostname -s)
cores=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 85 / 100 ))
export SLURM_CONF="$D/slurm.conf"
MUNGED_PID=/run/munge/hpccnn-munged.pid  # one munged for every cluster of this script on the machine
LOCK=/run/lock/hpccnn-local-slurm.lock  # held while a cluster starts its daemons or stops them (munged is shared)

lock() { mkdir -p "$(dirname "$LOCK")"; exec 9>"$LOCK"; flock -w 300 9 || die "another start or stop holds $LOCK"; }
unlock() { flock -u 9; exec 9>&-; }

die() { echo "local_slurm.sh: $*" >&2; exit 2; }
# a process that runs, not a zombie left for a parent that never reaps (gVisor's init doesn't)
running() { [ -r "/proc/$1/stat" ] && [ "$(cut -d')' -f2 "/proc/$1/stat" | cut -d' ' -f2)" != Z ]; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }
running_named() { for pid in $(pgrep -x "$1" || true); do running "$pid" && echo "$pid"; done; }
nodes() { cat "$D/nodes" 2>/dev/null || echo 1; }

# tc tbf on both ends of node k's link: what it sends and what it receives. burst holds 4 ms
# at the rate (at least 64 KB, the kernel refuses a burst below rate/HZ).
shape() {
  local k=$1 gbit=$2 bytes burst
  for dev in "hpn$k" "ns:eth0"; do
    local run=() name=$dev
    if [[ $dev == ns:* ]]; then run=(ip netns exec "hpccnn-n$k"); name=${dev#ns:}; fi
    "${run[@]}" tc qdisc del dev "$name" root 2>/dev/null || true
    if awk -v g="$gbit" 'BEGIN {exit !(g > 0)}'; then
      bytes=$(awk -v g="$gbit" 'BEGIN {printf "%d", g * 1e9 / 8}')
      burst=$(( bytes / 250 > 65536 ? bytes / 250 : 65536 ))
      "${run[@]}" tc qdisc add dev "$name" root tbf rate "${gbit}gbit" burst "$burst" latency 50ms
    fi
  done
}

network_up() {
  local n=$1 gbit=$2
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.0.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  for k in $(seq "$n"); do
    ip netns add "hpccnn-n$k"
    ip link add "hpn$k" type veth peer name eth0 netns "hpccnn-n$k"
    ip link set "hpn$k" master "$BRIDGE" up
    ip link add "hpn${k}x" type veth peer name eth1 netns "hpccnn-n$k"  # leads nowhere: not bridged
    ip link set "hpn${k}x" up
    ip netns exec "hpccnn-n$k" sh -c "ip link set lo up; ip addr add $NET.0.$((10 + k))/24 dev eth0;
      ip link set eth0 up; ip addr add $DEAD.0.$((10 + k))/24 dev eth1; ip link set eth1 up"
    shape "$k" "$gbit"
  done
  hosts_remove
  [ -z "$(tail -c1 /etc/hosts)" ] || echo >> /etc/hosts  # a last line without its newline stays whole
  for k in $(seq "$n"); do echo "$NET.0.$((10 + k)) n$k  # hpccnn-local-slurm $D" >> /etc/hosts; done
}

# /etc/hosts may be a bind mount: rewrite it in place rather than replace it
hosts_remove() {
  if grep -qF "# hpccnn-local-slurm $D" /etc/hosts; then
    grep -vF "# hpccnn-local-slurm $D" /etc/hosts > "$D/hosts.tmp" || true
    # over the old text, then cut to length: the lines before ours (the host's own name, which another
    # cluster on this machine resolves meanwhile) are there at every moment, as a truncation would not leave them
    dd if="$D/hosts.tmp" of=/etc/hosts conv=notrunc status=none
    truncate -s "$(stat -c %s "$D/hosts.tmp")" /etc/hosts && rm -f "$D/hosts.tmp"
  fi
}

network_down() {
  local n=$1
  for k in $(seq "$n"); do
    # whatever still runs on the node (a step whose controller went away first) goes with it
    for pid in $(ip netns pids "hpccnn-n$k" 2>/dev/null || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip link del "hpn$k" 2>/dev/null || true
    ip link del "hpn${k}x" 2>/dev/null || true
    ip netns del "hpccnn-n$k" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  hosts_remove
}

write_conf() {
  local n=$1 cpus=$2 node_mem=$3 ctld nodes_line
  if [ "$n" -eq 1 ]; then
    ctld=$host
    nodes_line="NodeName=$host CPUs=$cores RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN"
    echo "NodeName=$host Name=gpu File=$D/dev/fakegpu[0-1]" > "$D/gres.conf"
  else
    ctld="$host($NET.0.1)"
    nodes_line=$(for k in $(seq "$n"); do
      echo "NodeName=n$k NodeAddr=$NET.0.$((10 + k)) NodeHostname=n$k CPUs=$cpus RealMemory=$node_mem Gres=gpu:2 State=UNKNOWN"
    done)
    echo "NodeName=n[1-$n] Name=gpu File=$D/dev/fakegpu[0-1]" > "$D/gres.conf"
  fi
  local per_node=""
  [ "$n" -gt 1 ] && per_node="%n"
  cat > "$SLURM_CONF" <<CONF
ClusterName=hpccnn-local
SlurmctldHost=$ctld
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
SlurmdSpoolDir=$D/spool/$per_node
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.${per_node:-local}.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.${per_node:-local}.log
TmpFS=$D/tmp/$per_node
SlurmctldPort=${HPCCNN_SLURMCTLD_PORT:-6817}
SlurmdPort=${HPCCNN_SLURMD_PORT:-6818}
# clusters that run side by side (the tests' workers) number their jobs apart: Open MPI names its
# session directories after SLURM's job id
FirstJobId=${HPCCNN_SLURM_FIRST_JOB_ID:-1}
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MaxArraySize=1001
KillWait=5
InactiveLimit=0
MinJobAge=600
# a node that stops answering (its link down) is DOWN after this many seconds and its jobs end
SlurmdTimeout=${HPCCNN_SLURMD_TIMEOUT:-30}
GresTypes=gpu
$nodes_line
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  local n=1 cpus="" gbit=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) n=${2:?}; shift 2 ;;
      --cpus-per-node) cpus=${2:?}; shift 2 ;;
      --link-gbit) gbit=${2:?}; shift 2 ;;
      *) die "unknown option $1; usage: start [--nodes N] [--cpus-per-node C] [--link-gbit X]" ;;
    esac
  done
  [[ $n =~ ^[1-9][0-9]?$ ]] || die "--nodes must be a whole number from 1 to 99, not '$n'"
  [[ -z $cpus || $cpus =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-node must be a positive whole number, not '$cpus'"
  [[ $gbit =~ ^[0-9]*\.?[0-9]+$ ]] || die "--link-gbit must be a number of Gbit/s (0: unshaped), not '$gbit'"
  [ "$n" -gt 1 ] || ! awk -v g="$gbit" 'BEGIN {exit !(g > 0)}' || die "--link-gbit needs --nodes 2 or more (one node has no link)"
  if alive "$D/slurmctld.pid"; then
    [ "$(nodes)" = "$n" ] || die "a cluster of $(nodes) node(s) is already running from $D; stop it first"
    echo "local SLURM cluster already running: export SLURM_CONF=$SLURM_CONF"; return 0
  fi
  if [ "$n" -gt 1 ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "another multi-node cluster owns $BRIDGE; stop it first (HPCCNN_SLURM_DIR of that cluster)"
  fi
  local share=$(( cores / n > 0 ? cores / n : 1 ))
  cpus=${cpus:-$share}
  mkdir -p "$D"/{state,spool,log,dev,tmp}
  echo "$n" > "$D/nodes"
  lock  # until slurmctld runs: a stop meanwhile then sees this cluster and leaves munged running
  if [ -z "$(running_named munged)" ]; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    # munged runs as munge and writes its pid file where every cluster's stop finds it: the last one stops it
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGED_PID" 9>&-
  fi
  for i in 0 1; do [ -c "$D/dev/fakegpu$i" ] || mknod "$D/dev/fakegpu$i" c 1 3; done
  write_conf "$n" "$cpus" $(( mem_mb / n ))
  /usr/sbin/slurmctld -f "$SLURM_CONF" 9>&-
  unlock
  local names=()
  if [ "$n" -eq 1 ]; then
    mkdir -p "$D/tmp"
    /usr/sbin/slurmd -f "$SLURM_CONF"
    names=("$host")
  else
    network_up "$n" "$gbit"
    echo "$gbit" > "$D/link-gbit"
    for k in $(seq "$n"); do
      mkdir -p "$D/spool/n$k" "$D/tmp/n$k"
      # node k's own cores: a rank started on it sees only those (taskset is inherited)
      local first=$(( (k - 1) * share % cores )) last
      last=$(( first + share - 1 ))
      # nsenter, not `ip netns exec`: that remounts /sys, and slurmd then finds no cgroup mount
      nsenter --net="/var/run/netns/hpccnn-n$k" unshare --uts sh -c \
        "hostname n$k; exec taskset -c $first-$last /usr/sbin/slurmd -f '$SLURM_CONF' -N n$k"
      names+=("n$k")
    done
  fi
  for _ in $(seq 90); do
    local up
    up=$(sinfo -h -N -o '%N %T' 2>/dev/null | grep -cE ' (idle|mixed|allocated)' || true)
    if [ "$up" -ge "$n" ]; then
      echo "local SLURM cluster up ($n node(s): ${names[*]}): export SLURM_CONF=$SLURM_CONF"; return 0
    fi
    for name in "${names[@]}"; do scontrol update NodeName="$name" State=RESUME >/dev/null 2>&1 || true; done
    sleep 1
  done
  echo "local SLURM cluster did not come up; see $D/log/" >&2
  sinfo -N >&2 || true
  exit 1
}

link() {
  [ "$(nodes)" -gt 1 ] || die "link needs a cluster of several nodes (start --nodes 2)"
  local node="" action=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --gbit) for k in $(seq "$(nodes)"); do shape "$k" "${2:?}"; done; echo "$2" > "$D/link-gbit"; shift 2 ;;
      --unshaped) for k in $(seq "$(nodes)"); do shape "$k" 0; done; echo 0 > "$D/link-gbit"; shift ;;
      --node) node=${2:?}; shift 2 ;;
      --down) action=down; shift ;;
      --up) action=up; shift ;;
      *) die "unknown option $1; usage: link [--gbit X | --unshaped] [--node nK --down|--up]" ;;
    esac
  done
  if [ -n "$action" ]; then
    [[ $node =~ ^n([1-9][0-9]*)$ ]] && [ "${BASH_REMATCH[1]}" -le "$(nodes)" ] || die "--node must be one of n1..n$(nodes)"
    ip link set "hp$node" "$action"
    # back up: ask the controller to take the node again now, rather than at its next ping
    [ "$action" = up ] && scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
  fi
}

stop() {
  local n
  n=$(nodes)
  if alive "$D/slurmctld.pid"; then  # end the jobs first: their steps would outlive slurmd
    scancel --quiet --full --user=root >/dev/null 2>&1 || true
    for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  lock
  local others=0 own
  own=$(cat "$D/slurmctld.pid" 2>/dev/null || echo none)
  for pid in $(running_named slurmctld); do [ "$pid" = "$own" ] || others=1; done
  local pids=()  # read first: slurmd removes its pid file on SIGTERM, before it has ended
  for pidfile in "$D"/slurmd.*.pid "$D/slurmctld.pid" "$MUNGED_PID"; do
    # munged serves every cluster on this machine: it stays while another one runs
    if [ "$pidfile" = "$MUNGED_PID" ]; then
      [ "$others" -eq 1 ] && continue
      [ "$(cat "/proc/$(cat "$pidfile" 2>/dev/null)/comm" 2>/dev/null)" = munged ] || continue  # a stale file
    fi
    if alive "$pidfile"; then pids+=("$(cat "$pidfile")"); kill "${pids[-1]}" 2>/dev/null || true; fi
  done
  for _ in $(seq 20); do
    local left=()
    for pid in "${pids[@]}"; do running "$pid" && left+=("$pid"); done
    [ "${#left[@]}" -eq 0 ] && break
    sleep 0.5
  done
  # a slurmd waiting on a step that can't reach the controller any more doesn't end by itself
  for pid in "${pids[@]}"; do running "$pid" && kill -9 "$pid" 2>/dev/null || true; done
  if [ "$n" -gt 1 ]; then network_down "$n"; fi
  rm -f "$D/nodes" "$D/link-gbit"
  echo "local SLURM cluster stopped"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  link) shift; link "$@" ;;
  status) sinfo -N ;;
  *) echo "usage: $0 start [--nodes N] [--cpus-per-node C] [--link-gbit X] | link ... | stop | status" >&2; exit 2 ;;
esac
