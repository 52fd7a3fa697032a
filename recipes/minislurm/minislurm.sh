#!/usr/bin/env bash
# Start, stop or inspect a mini SLURM cluster (munge + slurmctld + N slurmd) on this host.
#   usage: minislurm.sh start|stop|status|env
# State (config, spool, logs, pids) lives in $MINISLURM_STATE (default: <repo>/.minislurm).
# After `start`, point clients at it with:  eval "$(recipes/minislurm/minislurm.sh env)"
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
STATE=${MINISLURM_STATE:-$repo/.minislurm}
NODES=${MINISLURM_NODES:-4}
CPUS=${MINISLURM_CPUS:-2}          # declared per virtual node; all nodes share the real cores
MEM=${MINISLURM_MEM:-4096}         # MB per virtual node
CTLD_PORT=${MINISLURM_CTLD_PORT:-16817}
NODE_PORT=${MINISLURM_NODE_PORT:-17001}
export SLURM_CONF=$STATE/slurm.conf

log() { echo "minislurm: $*" >&2; }
die() { echo "minislurm: error: $*" >&2; exit 1; }

# A pid file may outlive its daemon (a container restart reuses pids): a pid counts as ours only
# if its process has the command name and start time recorded beside the pid file at start.
ident() {   # "comm starttime" of a live pid, from /proc (starttime: field 22, after the comm)
  local stat rest
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  rest=${stat##*) }; set -- $rest
  echo "$(cat "/proc/${stat%% *}/comm" 2>/dev/null) ${20}"
}
record() {  # remember who the pid file's process is, once its daemon has written it
  local pid; pid=$(cat "$1" 2>/dev/null) || return 0
  ident "$pid" > "$1.id" 2>/dev/null || true
}
alive() {   # $1 pid file, $2 expected command name: true if its pid is that very daemon
  [[ -f $1 ]] || return 1
  local pid want now; pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  now=$(ident "$pid") || return 1
  if [[ -f $1.id ]]; then want=$(cat "$1.id"); [[ $now == "$want" ]]
  else [[ ${now%% *} == "$2" ]]; fi   # no record (an older start): the command name at least
}

need() {
  local missing=()
  for c in munged munge slurmctld slurmd sinfo; do command -v "$c" >/dev/null || missing+=("$c"); done
  ((${#missing[@]} == 0)) || die "missing ${missing[*]}: install the Debian packages 'slurm-wlm munge' (make system)"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munge already running (not ours: left as it is on stop)"; return
  fi
  [[ -f /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge /etc/munge/munge.key
  chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key; chmod 0755 /run/munge
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  cp /run/munge/munged.pid "$STATE/munged.pid"   # marks munged as ours, so stop takes it down
  record "$STATE/munged.pid"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not answer; see /var/log/munge/munged.log"
}

write_conf() {
  local host; host=$(hostname -s)
  sed -e "s|@STATE@|$STATE|g" -e "s|@HOST@|$host|g" -e "s|@NODES@|$NODES|g" \
      -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
      -e "s|@PORTS@|$NODE_PORT-$((NODE_PORT + NODES - 1))|g" \
      "$here/slurm.conf.in" > "$STATE/slurm.conf.new"
  mv "$STATE/slurm.conf.new" "$STATE/slurm.conf"
}

wait_idle() {
  local deadline=$((SECONDS + 60)) up
  while ((SECONDS < deadline)); do
    up=$(sinfo -h -N -o '%t' 2>/dev/null | grep -cE '^(idle|mix|alloc)' || true)
    ((up == NODES)) && { log "$NODES nodes up"; return; }
    sleep 0.5
  done
  sinfo -N -l >&2 || true
  die "nodes not idle after 60 s; logs in $STATE/log"
}

start() {
  need
  mkdir -p "$STATE"/{ctld,log,spool}
  start_munge
  if alive "$STATE/slurmctld.pid" slurmctld; then
    log "slurmctld already running"
  else
    rm -f "$STATE/slurmctld.pid" "$STATE/slurmctld.pid.id"
    write_conf
    slurmctld -i   # -i: ignore state of a previous incarnation (jobs of a dead cluster)
    wait_pidfile "$STATE/slurmctld.pid"
  fi
  for k in $(seq "$NODES"); do
    local f=$STATE/slurmd.node$k.pid
    alive "$f" slurmd && continue
    rm -f "$f" "$f.id"; mkdir -p "$STATE/spool/node$k"; slurmd -N "node$k"; wait_pidfile "$f"
  done
  wait_idle
}

wait_pidfile() {   # the daemon forks and writes its pid file; record its identity then
  for _ in $(seq 100); do [[ -s $1 ]] && { record "$1"; return; }; sleep 0.05; done
  log "warning: $1 not written within 5 s"
}

# A container under chroot isolation shares this host's process table but has its own root, and
# so its own /run/munge and state: only processes under our root can be this cluster's.
same_root() { [[ $(stat -L -c %d:%i "/proc/$1/root/" 2>/dev/null) == "$(stat -L -c %d:%i /)" ]]; }
here_named() { local p; for p in $(pgrep -x "$1" || true); do same_root "$p" && echo "$p"; done; return 0; }

ours_stepds() {   # slurmstepd processes of this cluster: their open files lie under $STATE
  local p
  for p in $(here_named slurmstepd); do
    # not grep -q: under pipefail, ls killed by SIGPIPE would turn a match into a miss
    if { ls -l "/proc/$p/fd" "/proc/$p/cwd" 2>/dev/null || true; } | grep -F -- "$STATE/" >/dev/null
    then echo "$p"; fi
  done
}

stop() {
  export SLURM_CONF
  if [[ -f $STATE/slurm.conf ]] && alive "$STATE/slurmctld.pid" slurmctld; then
    scancel --user="$(id -un)" 2>/dev/null || true   # no job outlives the cluster
    # and wait for them to end: slurmd must be there to kill their processes (KillWait=5)
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && [[ -n $(squeue -h -o %i 2>/dev/null) ]]; do sleep 0.5; done
    [[ -z $(squeue -h -o %i 2>/dev/null) ]] || { log "jobs still listed after 30 s:"; squeue >&2 || true; }
  fi
  local pids=() f name ctld others
  ctld=$(cat "$STATE/slurmctld.pid" 2>/dev/null || true)
  others=$(here_named slurmctld | grep -vx -- "${ctld:-none}" || true)   # before we kill ours
  for f in "$STATE"/slurmd.*.pid "$STATE"/slurmctld.pid "$STATE"/munged.pid; do
    [[ -f $f ]] || continue
    name=$(basename "$f" .pid); name=${name%%.*}
    if [[ $name == munged && -n $others ]]; then
      log "munged left running: another SLURM on this host uses it"
    elif alive "$f" "$name"; then
      pids+=("$(cat "$f")"); kill "$(cat "$f")" 2>/dev/null || true
    elif [[ -s $f ]]; then
      log "pid file $f names pid $(cat "$f"), which is not our $name: not signalled"
    fi
    rm -f "$f" "$f.id"
  done
  for p in "${pids[@]}"; do   # wait, then insist
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  # Job steps run under slurmstepd; a killed slurmd can leave them behind. Only ours: another
  # mini SLURM may run on this host.
  local stepds; stepds=$(ours_stepds)
  [[ -z $stepds ]] || kill -9 $stepds 2>/dev/null || true
  log "stopped"
}

status() {
  alive "$STATE/slurmctld.pid" slurmctld || { echo "mini SLURM is not running (state: $STATE)"; return 3; }
  echo "SLURM_CONF=$SLURM_CONF"; sinfo -N -l; echo; squeue
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  # the virtual nodes share /tmp, which breaks srun's PMIx across them: MPI jobs use mpirun
  env) echo "export SLURM_CONF=$SLURM_CONF LHCCNN_LAUNCHER=mpirun" ;;
  *) echo "usage: $0 start|stop|restart|status|env" >&2; exit 2 ;;
esac
