#!/usr/bin/env bash
# Debian packages hpccnn needs: Open MPI (Horovod and mpi4py build against it),
# SLURM and munge (the local test cluster). Quick when everything is installed.
set -euo pipefail
packages=(openmpi-bin libopenmpi-dev slurm-wlm munge)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "hpccnn: missing Debian packages: ${missing[*]}; run 'sudo apt-get install -y ${missing[*]}' (or load your cluster's MPI module) and retry" >&2
  exit 1
fi
echo "hpccnn: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
