# shellcheck shell=bash
# The lhccnn software environment; source it (do not run it), in a shell or a job script:
#   source recipes/nersc/env.sh
# At NERSC (a `module` command exists): module load ${LHCCNN_TF_MODULE:-tensorflow}; install the
# package into it once with `python -m pip install --user -e .`. Elsewhere: the repo's .venv.
# Also exports LHCCNN_LAUNCHER (srun unless set), MPI and HDF5 settings, and LHCCNN_DATA_DIR from
# LHCCNN_NERSC_DATA (the dataset folder on the shared filesystem) when that is given.
# Safe to source twice. No `set -e` here (it would leak into your shell): errors `return 1`.

_lhccnn_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) || return 1

# Batch shells may lack the `module` function although Lmod is installed: load its init.
if [[ -z $(type -t module) && -n ${MODULESHOME:-} && -f $MODULESHOME/init/bash ]]; then
  source "$MODULESHOME/init/bash"
fi
if [[ -n $(type -t module) ]]; then
  module load "${LHCCNN_TF_MODULE:-tensorflow}" ||
    { echo "env.sh: 'module load ${LHCCNN_TF_MODULE:-tensorflow}' failed" >&2; return 1; }
else
  echo "env.sh: no 'module' command here: modules skipped" >&2
  if [[ -f $_lhccnn_repo/.venv/bin/activate && ${VIRTUAL_ENV:-} != "$_lhccnn_repo/.venv" ]]; then
    source "$_lhccnn_repo/.venv/bin/activate" || return 1
  fi
fi

export LHCCNN_LAUNCHER=${LHCCNN_LAUNCHER:-srun}   # how MPI ranks start: srun | mpirun
export OMPI_MCA_mpi_yield_when_idle=1             # Open MPI: don't busy-poll cores TF needs
export HDF5_USE_FILE_LOCKING=FALSE                # Lustre/DVS mounts reject HDF5's file locks
if [[ -z ${LHCCNN_DATA_DIR:-} && -n ${LHCCNN_NERSC_DATA:-} ]]; then
  export LHCCNN_DATA_DIR=$LHCCNN_NERSC_DATA
fi
unset _lhccnn_repo
