#!/usr/bin/env bash
# Debian packages hpccnn needs: Open MPI (Horovod and mpi4py build against it),
# SLURM and munge (the local test clusters; iproute2 makes their namespace nodes and links), Zalando's
# Fashion-MNIST (python -m hpccnn.stage fashion_mnist), and a headless Chromium with its WebDriver
# (the tests open hpccnn's HTML reports in it). Quick when everything is installed.
set -euo pipefail
# iproute2: ip and tc for the namespace nodes; dataset-fashion-mnist: real data of MNIST's size, offline
packages=(openmpi-bin libopenmpi-dev slurm-wlm munge iproute2 dataset-fashion-mnist)
browser=(chromium chromium-driver)  # installed without Recommends: a headless browser needs none
missing=()
for p in "${packages[@]}" "${browser[@]}"; do
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
main=() extra=()
for p in "${missing[@]}"; do
  if [[ " ${browser[*]} " == *" $p "* ]]; then extra+=("$p"); else main+=("$p"); fi
done
[ ${#main[@]} -eq 0 ] || apt-get install -y -qq "${main[@]}" >/dev/null
[ ${#extra[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${extra[@]}" >/dev/null
