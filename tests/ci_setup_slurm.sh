#!/usr/bin/env bash
# Install what tests/slurm_cluster.sh needs to run a real local Slurm cluster (Debian/Ubuntu, root).
#
# Idempotent: does nothing when every binary is already present. Accounting (slurmdbd + MariaDB)
# is installed too because submitit polls `sacct` to notice cancelled or killed jobs; without it
# `job.result()` can wait forever. `mariadb-server` (not -core) is avoided on purpose: it pulls in
# perl and is not needed to run mariadbd by hand.
set -euo pipefail

need=(slurmctld slurmd sbatch munged mungekey slurmdbd mariadbd mariadb-install-db mariadb)
missing=0
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing=1; done
if [[ $missing == 0 ]]; then
  echo "[ci_setup_slurm] slurm, munge and mariadb already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ci_setup_slurm] need root (or sudo) to apt-get install" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core
echo "[ci_setup_slurm] installed: $(slurmd -V 2>/dev/null || echo slurm)"
