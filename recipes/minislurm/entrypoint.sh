#!/usr/bin/env bash
# Container entrypoint: start the mini SLURM cluster, run the given command, stop the cluster;
# exits with the command's status (1 if it succeeded but the cluster did not stop).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Stopped also when the command fails or is interrupted: the daemons detach, and under chroot
# isolation (recipes/minislurm/container.sh) they would outlive the container on the host.
stop() {
  local rc=$1
  "$here/minislurm.sh" stop || { echo "entrypoint: error: the mini SLURM did not stop" >&2; ((rc)) || rc=1; }
  exit "$rc"
}
trap 'stop $?' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The container's own name must resolve (munge, slurmd and the Dask scheduler look it up): Docker
# adds it to /etc/hosts, buildah's chroot isolation does not.
getent hosts "$(hostname)" >/dev/null || echo "127.0.1.1 $(hostname)" >> /etc/hosts
"$here/minislurm.sh" start
eval "$("$here/minislurm.sh" env)"
"$@"
