#!/bin/bash
# The "lhccnn" Jupyter kernel's command (install_kernel.sh writes it into kernel.json's argv):
# loads the environment of env.sh, then becomes the IPython kernel.
#   kernel-helper.sh -f CONNECTION_FILE
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# env.sh before `set -u`: Lmod's `module` function is not written for nounset shells
source "$here/env.sh" || exit
set -euo pipefail
exec python -m ipykernel_launcher "$@"
