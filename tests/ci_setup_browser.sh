#!/usr/bin/env bash
# Install the headless browser the web demo tests drive (Debian/Ubuntu, root): Chromium and its
# WebDriver from the distribution, so the browser and the driver always match.
#
# Idempotent: does nothing when both are already present.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "[ci_setup_browser] chromium and chromedriver already installed"
  exit 0
fi

SUDO=""
if [[ $(id -u) != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "[ci_setup_browser] need root (or sudo) to apt-get install" >&2; exit 1; }
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium chromium-driver
echo "[ci_setup_browser] installed: $(chromedriver --version 2>/dev/null || echo chromedriver)"
