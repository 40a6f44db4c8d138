#!/usr/bin/env bash
# Install the system packages the real-thing tests need (Debian/Ubuntu, root), by group:
#   slurm    what tests/slurm_cluster.sh runs: slurmctld, slurmd, munge, and slurmdbd + MariaDB,
#            because submitit polls `sacct` to notice cancelled or killed jobs (without accounting
#            `job.result()` can wait forever). `mariadb-server` (not -core) is avoided on purpose:
#            it pulls in perl and is not needed to run mariadbd by hand.
#   browser  headless Chromium and its WebDriver from the distribution (they always match), which
#            the web demo tests drive.
#
#   bash tests/ci_setup.sh slurm browser      # idempotent: a group whose binaries exist is skipped
set -euo pipefail

declare -A BINARIES=(
  [slurm]="slurmctld slurmd sbatch munged mungekey slurmdbd mariadbd mariadb-install-db mariadb"
  [browser]="chromium chromedriver"
)
declare -A PACKAGES=(
  [slurm]="slurmctld slurmd slurm-client munge slurmdbd mariadb-server-core mariadb-client-core"
  [browser]="chromium chromium-driver"
)

(($#)) || { echo "usage: $0 slurm|browser ..." >&2; exit 2; }
wanted=()
for group in "$@"; do
  [[ -n ${BINARIES[$group]:-} ]] || { echo "[ci_setup] unknown group '$group' (slurm, browser)" >&2; exit 2; }
  missing=0
  for b in ${BINARIES[$group]}; do command -v "$b" >/dev/null 2>&1 || missing=1; done
  if ((missing)); then wanted+=(${PACKAGES[$group]}); else echo "[ci_setup] $group: already installed"; fi
done
((${#wanted[@]})) || exit 0

SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ci_setup] need root (or sudo) to apt-get install" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${wanted[@]}"
echo "[ci_setup] installed: ${wanted[*]}"
