#!/bin/bash
# Install the Jupyter kernel "lhccnn", which runs notebooks in the environment of env.sh
# (NERSC's TensorFlow module, or this repo's .venv elsewhere); pick it in JupyterHub's launcher.
#   recipes/nersc/install_kernel.sh               # per user: $JUPYTER_DATA_DIR/kernels, default
#                                                 #   ~/.local/share/jupyter/kernels
#   recipes/nersc/install_kernel.sh --prefix DIR  # into DIR/share/jupyter/kernels
# Running it again replaces the kernel. The kernel calls kernel-helper.sh in this checkout,
# so keep the checkout where it is (or re-run this after moving it).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
source "$here/env.sh" || exit   # the kernel's python installs it: its ipykernel is used
set -euo pipefail

where=(--user)
case "${1:-}" in
  --prefix) where=(--prefix "${2:?--prefix needs a directory}") ;;
  --prefix=*) where=(--prefix "${1#--prefix=}") ;;
  "") ;;
  *) echo "usage: $0 [--prefix DIR]" >&2; exit 2 ;;
esac
name=lhccnn
out=$(python -m ipykernel install "${where[@]}" --name "$name" \
      --display-name "lhccnn (TensorFlow, Horovod)")
dir=${out##* in }   # ipykernel prints "Installed kernelspec NAME in DIR"
[[ -f $dir/kernel.json ]] || { echo "error: no kernel.json after: $out" >&2; exit 1; }
# argv: the helper instead of a bare python, so the kernel gets modules and settings
python - "$dir/kernel.json" "$here/kernel-helper.sh" <<'EOF'
import json, sys
path, helper = sys.argv[1:]
with open(path) as f:
    spec = json.load(f)
spec["argv"] = [helper, "-f", "{connection_file}"]
with open(path, "w") as f:
    json.dump(spec, f, indent=1)
EOF
echo "kernel '$name' installed in $dir (runs $here/kernel-helper.sh)"
