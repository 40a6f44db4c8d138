#!/usr/bin/env bash
# A throw-away multi-node Slurm cluster on this one machine, for the launcher tests.
#
#   tests/slurm_cluster.sh start|stop|status|env
#
# Why a real cluster: the launchers' interesting behaviour (srun rank layout, --signal delivery,
# requeue, partition preemption, submitit reading job states through sacct) lives in Slurm itself,
# so mocking it would test nothing. Needs root and tests/ci_setup.sh slurm's packages.
#
# Shape: "nodes" are several slurmd processes on this host named 127.0.0.1, 127.0.0.2, ... so the
# first host of SLURM_JOB_NODELIST is a reachable address (the trainer's MASTER_ADDR) with no
# /etc/hosts edits. Partition "debug" (default) is preemptible (REQUEUE, 10 s grace) by jobs in
# partition "high". Accounting (slurmdbd + MariaDB) is on because submitit polls sacct.
# Everything (configs, sockets, logs, spool, database) lives under one directory; every daemon
# writes a pidfile and is stopped by that pid, never by name.
#
# Environment knobs:
#   LSEG_SLURM_DIR    state directory                       [/tmp/lseg-slurm]
#   LSEG_SLURM_NODES  number of nodes                       [2]
#   LSEG_SLURM_PORT   slurmctld port; slurmdbd +1, MariaDB +2, node i: +10+i   [6900]
# Clients need `export SLURM_CONF=$LSEG_SLURM_DIR/etc/slurm.conf` (printed by `start` and `env`).
set -euo pipefail

DIR=${LSEG_SLURM_DIR:-/tmp/lseg-slurm}
NODES=${LSEG_SLURM_NODES:-2}
PORT=${LSEG_SLURM_PORT:-6900}
DBD_PORT=$((PORT + 1))
DB_PORT=$((PORT + 2))
export SLURM_CONF=$DIR/etc/slurm.conf
MUNGE_SOCKET=$DIR/run/munge.sock
DB_SOCKET=$DIR/run/mariadb.sock

say() { echo "[slurm_cluster] $*" >&2; }
node() { echo "127.0.0.$1"; }

# Pid recorded in pidfile $1 if that process is alive (not a zombie) and its command matches $2.
live_pid() {
  local pid state
  [[ -s $1 ]] || return 1
  pid=$(tr -cd '0-9' <"$1")
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -q -- "$2" || return 1
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [[ -n $state && $state != Z ]] || return 1
  echo "$pid"
}

# retry <seconds> <command...>: poll until the command succeeds.
retry() {
  local deadline=$(($(date +%s) + $1)); shift
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || return 1
    sleep 0.2
  done
}

pid_gone() { local s; s=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1); [[ -z $s || $s == Z ]]; }

# halt <pidfile> <pattern>: TERM, then KILL if it is still there after 30 s.
halt() {
  local pid
  pid=$(live_pid "$1" "$2") || return 0
  say "stopping $2 ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  retry 30 pid_gone "$pid" || { kill -KILL "$pid" 2>/dev/null || true; retry 5 pid_gone "$pid" || true; }
}

have_accounting() {
  command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && command -v mariadb-install-db >/dev/null
}

write_config() {
  mkdir -p "$DIR"/{etc,run,log,spool/ctld,munge,db}
  chmod 700 "$DIR/munge"
  local cpus mem i
  cpus=$(nproc)
  mem=$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) / 2 / NODES))
  : >"$DIR/etc/plugstack.conf"
  cat >"$SLURM_CONF" <<EOF
# Written by tests/slurm_cluster.sh; regenerated on every cold start.
ClusterName=lsegtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
PlugStackConfig=$DIR/etc/plugstack.conf
MailProg=/bin/true
# Containers have no usable cgroups: track processes through /proc and do not bind tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
# Slurm's default: a SIGTERM'd trainer (scancel) has this long to save before SIGKILL.
KillWait=30
InactiveLimit=0
MinJobAge=300
# Declared so that --gpus-per-node=0 / --gres requests parse; the nodes have no GPUs.
GresTypes=gpu
# Jobs in "high" requeue jobs in "debug"; the victim first receives its own --signal.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
  if [[ $ACCOUNTING == 1 ]]; then
    # AccountingStoragePass must name our munge socket, or slurmctld talks to the default one.
    cat >>"$SLURM_CONF" <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
EOF
    (umask 077; cat >"$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
    )
  else
    echo "AccountingStorageType=accounting_storage/none" >>"$SLURM_CONF"
  fi
  for i in $(seq 1 "$NODES"); do
    mkdir -p "$DIR/spool/$(node "$i")"
    echo "NodeName=$(node "$i") NodeHostname=localhost NodeAddr=$(node "$i") Port=$((PORT + 10 + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$SLURM_CONF"
  done
  cat >>"$SLURM_CONF" <<EOF
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=10
PartitionName=high Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
}

start_munge() {
  live_pid "$DIR/run/munged.pid" munged >/dev/null && return 0
  [[ -s $DIR/munge/munge.key ]] || mungekey --create --keyfile="$DIR/munge/munge.key"
  chmod 600 "$DIR/munge/munge.key"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/seed"
  retry 10 test -S "$MUNGE_SOCKET" || { say "munged did not start"; exit 1; }
}

start_accounting() {
  local db_args=(--no-defaults --datadir="$DIR/db/data" --user=root --skip-name-resolve
                 --innodb-buffer-pool-size=16M --innodb-log-file-size=8M)
  if ! live_pid "$DIR/run/mariadbd.pid" mariadbd >/dev/null; then
    if [[ ! -d $DIR/db/data/mysql ]]; then
      mariadb-install-db "${db_args[@]}" --auth-root-authentication-method=socket --skip-test-db \
        >"$DIR/log/mariadb-install.log" 2>&1 || { say "mariadb-install-db failed, see $DIR/log"; exit 1; }
    fi
    setsid mariadbd "${db_args[@]}" --socket="$DB_SOCKET" --pid-file="$DIR/run/mariadbd.pid" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    retry 60 mariadb -S "$DB_SOCKET" -u root -e 'select 1' || { say "mariadbd did not start"; exit 1; }
    mariadb -S "$DB_SOCKET" -u root -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  fi
  if ! live_pid "$DIR/run/slurmdbd.pid" slurmdbd >/dev/null; then
    slurmdbd  # finds slurmdbd.conf next to $SLURM_CONF
    retry 60 bash -c "exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT" || { say "slurmdbd did not start"; exit 1; }
  fi
}

nodes_up() { [[ $(sinfo -h -N -t idle,alloc,mix -o %N | sort -u | wc -l) -ge $NODES ]]; }

cmd_start() {
  [[ $(id -u) == 0 ]] || { say "needs root"; exit 1; }
  local b
  for b in munged mungekey slurmctld slurmd sbatch; do
    command -v "$b" >/dev/null || { say "$b not found: run tests/ci_setup.sh slurm"; exit 1; }
  done
  ACCOUNTING=0
  have_accounting && ACCOUNTING=1
  # Rewrite the config only while slurmctld is down, so running daemons never see a changed file.
  live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null || write_config
  start_munge
  [[ $ACCOUNTING == 1 ]] && start_accounting
  live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null || slurmctld -f "$SLURM_CONF"
  retry 30 scontrol ping || { say "slurmctld did not start"; tail -5 "$DIR/log/slurmctld.log" >&2; exit 1; }
  local i
  for i in $(seq 1 "$NODES"); do
    live_pid "$DIR/run/slurmd-$(node "$i").pid" slurmd >/dev/null || slurmd -f "$SLURM_CONF" -N "$(node "$i")"
  done
  retry 60 nodes_up || { say "nodes did not register"; sinfo -N >&2; exit 1; }
  say "up: $NODES nodes, accounting=$ACCOUNTING, state in $DIR"
  cmd_env
}

# slurmstepd processes that belong to this cluster (they carry our SLURM_CONF in their environment).
our_stepds() {
  local d
  for d in /proc/[0-9]*; do
    { tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -q '^slurmstepd' || continue
    { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" && echo "${d#/proc/}"
  done
  return 0
}

cmd_stop() {
  local f p
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    scancel --full --quiet $(squeue -h -o %A) 2>/dev/null || true
    retry 30 bash -c '[[ -z $(squeue -h -o %A) ]]' || say "jobs still listed; stopping anyway"
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  halt "$DIR/run/slurmctld.pid" slurmctld
  for f in "$DIR"/run/slurmd-*.pid; do [[ -e $f ]] && halt "$f" slurmd; done
  for p in $(our_stepds); do say "killing leftover slurmstepd $p"; kill -KILL "$p" 2>/dev/null || true; done
  halt "$DIR/run/slurmdbd.pid" slurmdbd
  halt "$DIR/run/mariadbd.pid" mariadbd
  halt "$DIR/run/munged.pid" munged
  say "stopped"
}

cmd_status() {
  local f rc=0
  for f in munged mariadbd slurmdbd slurmctld; do
    if live_pid "$DIR/run/$f.pid" "$f" >/dev/null; then echo "$f: up"; else echo "$f: down"; rc=1; fi
  done
  for f in "$DIR"/run/slurmd-*.pid; do
    [[ -e $f ]] || continue
    if live_pid "$f" slurmd >/dev/null; then echo "$(basename "$f" .pid): up"; else echo "$(basename "$f" .pid): down"; rc=1; fi
  done
  return $rc
}

cmd_env() { echo "export SLURM_CONF=$SLURM_CONF"; }

case ${1:-} in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
