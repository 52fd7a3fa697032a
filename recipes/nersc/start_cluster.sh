#!/bin/bash
# An IPyParallel cluster in this SLURM allocation: the controller here, one engine per task
# (one MPI job, so Horovod can run across the engines). Run it inside an allocation:
#   salloc -N 2 -C cpu -q interactive -t 30 recipes/nersc/start_cluster.sh [command ...]
# or, to keep the controller on a compute node, in the shell that plain salloc opens there.
# With a command: runs it once every engine has registered, then stops the cluster and exits
# with the command's code. Without one: serves until killed (Ctrl-C, scancel, time limit).
# Notebooks connect with the ipp.Client(...) line printed below; the command gets it as
# LHCCNN_CLUSTER_ID and LHCCNN_PROFILE_DIR. Env: LHCCNN_LAUNCHER=srun|mpirun, LHCCNN_WAIT
# (seconds to wait for the engines, default 120), IPYTHONDIR (must be on a shared filesystem).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/env.sh" || exit   # before `set -u`: Lmod's `module` is not nounset-safe
set -euo pipefail
umask 077   # connection files hold the cluster's key: yours only (ipyparallel also chmods 600)

: "${SLURM_JOB_ID:?run this inside an allocation: salloc ... $0}"
export LHCCNN_CLUSTER_ID=${LHCCNN_CLUSTER_ID:-lhccnn-$SLURM_JOB_ID}
export LHCCNN_PROFILE_DIR=${LHCCNN_PROFILE_DIR:-${IPYTHONDIR:-$HOME/.ipython}/profile_default}
n=${SLURM_NTASKS:-$SLURM_NNODES} wait_s=${LHCCNN_WAIT:-120}
[[ $LHCCNN_CLUSTER_ID =~ ^[A-Za-z0-9_.+-]+$ ]] || { echo "bad LHCCNN_CLUSTER_ID" >&2; exit 2; }
# --overlap: later srun steps share the nodes; --kill-on-bad-exit: a dead rank ends the MPI job
case $LHCCNN_LAUNCHER in
  srun) launch=(srun --overlap --cpu-bind=none --kill-on-bad-exit=1 -n "$n") ;;
  mpirun) launch=(mpirun -np "$n" --bind-to none) ;;
  *) echo "error: LHCCNN_LAUNCHER must be srun or mpirun, got '$LHCCNN_LAUNCHER'" >&2; exit 2 ;;
esac
ipp=(--cluster-id="$LHCCNN_CLUSTER_ID" --profile-dir="$LHCCNN_PROFILE_DIR")
mkdir -p "$LHCCNN_PROFILE_DIR/log"; log=$LHCCNN_PROFILE_DIR/log/$LHCCNN_CLUSTER_ID
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM

ipcontroller --ip='*' --location="$(hostname)" "${ipp[@]}" &>"$log-controller.log" & pids+=($!)
"${launch[@]}" ipengine "${ipp[@]}" --IPEngine.wait_for_url_file="$wait_s" \
  </dev/null &>"$log-engines.log" & pids+=($!)
python -c 'import sys, ipyparallel as ipp; c, d, t, n = sys.argv[1:]; t = float(t)
ipp.Client(cluster_id=c, profile_dir=d, timeout=t).wait_for_engines(int(n), timeout=t)' \
  "$LHCCNN_CLUSTER_ID" "$LHCCNN_PROFILE_DIR" "$wait_s" "$n" >/dev/null ||
  { echo "error: $n engines not up within ${wait_s}s; logs: $log-*.log" >&2; exit 1; }
echo "cluster $LHCCNN_CLUSTER_ID: $n engines on $SLURM_JOB_NODELIST. Connect with
  import ipyparallel as ipp
  rc = ipp.Client(cluster_id=\"$LHCCNN_CLUSTER_ID\", profile_dir=\"$LHCCNN_PROFILE_DIR\")
connection file: $LHCCNN_PROFILE_DIR/security/ipcontroller-$LHCCNN_CLUSTER_ID-client.json"
if (($#)); then "$@" <&0 & pids+=($!); wait $!; exit; fi   # <&0: keep the terminal's stdin
wait -n   # serve until killed, or until the controller or the engines end
