#!/usr/bin/env bash
# What the browser test (tests/test_aim_ui.py) needs: Debian's chromium and the playwright
# Python package, which drives that chromium (no `playwright install`, no download of its own).
# Idempotent: installs only what is missing.
set -euo pipefail

if [ ! -x /usr/bin/chromium ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y chromium
fi

if ! python -c "import playwright.sync_api" 2>/dev/null; then
  python -m pip install playwright
fi
