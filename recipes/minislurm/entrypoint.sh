#!/usr/bin/env bash
# Container entrypoint: start the mini SLURM cluster, run the given command, stop the cluster.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
"$here/minislurm.sh" start
eval "$("$here/minislurm.sh" env)"
rc=0
"$@" || rc=$?
"$here/minislurm.sh" stop
exit $rc
