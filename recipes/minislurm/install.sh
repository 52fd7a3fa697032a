#!/usr/bin/env bash
# Install the Debian packages the local stack needs, only those missing: MPI, SLURM, munge, a
# compiler and Python's headers for Horovod, Chromium for the browser tests. Needs root (or sudo) and Debian's registry.
set -euo pipefail
pkgs=(openmpi-bin libopenmpi-dev slurm-wlm munge cmake g++ make python3-dev python3-venv curl procps chromium)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]} == 0)); then echo "system packages: all present"; exit 0; fi
echo "system packages: installing ${missing[*]}"
sudo=(); ((EUID == 0)) || sudo=(sudo)
if ! { "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }; then
  echo "error: could not install ${missing[*]} with apt-get; install them by hand (Debian 12 names)" >&2
  exit 1
fi
