#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests in tests/slurm/ and for trying
# `launcher=slurm` without a real cluster.  Needs root (it is root on CI and the dev boxes).
#
#   scripts/slurm-local.sh up      install slurmctld/slurmd/slurm-client/munge if missing, write a
#                                  one-node slurm.conf (partition `debug`), start munged, slurmctld
#                                  and slurmd, wait until `sinfo` shows the node idle
#   scripts/slurm-local.sh down    cancel every job, stop the daemons it started
#   scripts/slurm-local.sh status  sinfo and squeue
#
# State, spool, pid and log files live under $SLURM_LOCAL_DIR (default /tmp/bert-ticket-slurm).
# /etc/slurm/slurm.conf is written only when it is absent or was written by this script (its
# first line says so): a machine with a real Slurm configuration is left alone.
set -euo pipefail

DIR=${SLURM_LOCAL_DIR:-/tmp/bert-ticket-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by bert-ticket scripts/slurm-local.sh"
HOST=$(hostname -s)

die() { echo "slurm-local: $*" >&2; exit 1; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "needs root to install ${missing[*]}"
  echo "slurm-local: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists may be stale or absent on a fresh image: update once if the install fails.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

write_conf() {
  if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script: a real Slurm configuration is left alone"
  fi
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" /etc/slurm
  cat > "$CONF" <<CONFEOF
$MARK (one node: $HOST)
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again only once the job credential expires (default 120 s): short here,
# so a pre-empted test job resumes within seconds.
AuthInfo=cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
# No cgroups in containers: track processes by their parent ids, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
# Short timers: the tests start and requeue jobs and want them scheduled at once (a requeued
# job becomes eligible without an event: only the periodic scheduler picks it up).
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000
KillWait=30
InactiveLimit=0
MinJobAge=300
NodeName=$HOST CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONFEOF
}

start_munge() {
  if pgrep -x munged >/dev/null; then return 0; fi
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  chmod 0700 /etc/munge
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged
  else
    munged --force
  fi
  mkdir -p "$DIR"
  touch "$DIR/munged.ours"  # `down` stops only a munged that `up` started
}

wait_idle() {
  local i state
  for i in $(seq 1 120); do
    state=$(sinfo -h -N -n "$HOST" -o '%T' 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mixed|allocated) echo "slurm-local: node $HOST is $state (partition debug)"; return 0 ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  sinfo || true
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" 2>/dev/null || true
  die "the node did not become idle within 60 s (logs under $DIR/log)"
}

stop_pid() {  # stop_pid FILE NAME: the daemon whose pid the file holds
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  fi
  rm -f "$f"
}

up() {
  install_packages
  if sinfo -h >/dev/null 2>&1 && [ -f "$DIR/slurmctld.pid" ]; then
    wait_idle
    return 0
  fi
  write_conf
  start_munge
  [ -f "$DIR/slurmctld.pid" ] && stop_pid "$DIR/slurmctld.pid"
  [ -f "$DIR/slurmd.pid" ] && stop_pid "$DIR/slurmd.pid"
  # -c: a clean start (no jobs from an earlier cluster under the same state folder).
  slurmctld -c
  slurmd
  wait_idle
}

down() {
  if command -v scancel >/dev/null && sinfo -h >/dev/null 2>&1; then
    squeue -h -o %A 2>/dev/null | sort -u | xargs -r scancel >/dev/null 2>&1 || true
  fi
  stop_pid "$DIR/slurmd.pid"
  stop_pid "$DIR/slurmctld.pid"
  if [ -f "$DIR/munged.ours" ]; then
    stop_pid /run/munge/munged.pid
    rm -f "$DIR/munged.ours"
  fi
  echo "slurm-local: stopped (logs under $DIR/log)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo; squeue ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
