#!/usr/bin/env bash
# What tests/test_space_browser.py needs: Debian's Chromium (the system browser Playwright drives; no browser is
# downloaded), and in .venv the project (scripts/setup.sh), its `space` extra (Gradio) and Playwright's Python package.
# Idempotent: each part is installed only when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HARMOCLIP_VENV:-.venv}
PLAYWRIGHT_REQUIREMENT=${HARMOCLIP_PLAYWRIGHT:-playwright==1.65.2}

if ! command -v chromium >/dev/null 2>&1; then
  echo "[browser-deps] installing Debian's chromium" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium >&2
fi

bash scripts/setup.sh
if ! "$VENV/bin/python" -c "import gradio" 2>/dev/null; then
  echo "[browser-deps] installing the space extra (gradio) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e ".[space]" >&2
fi
if ! "$VENV/bin/python" -c "import playwright.sync_api" 2>/dev/null; then
  echo "[browser-deps] installing $PLAYWRIGHT_REQUIREMENT into $VENV" >&2
  "$VENV/bin/python" -m pip install -q "$PLAYWRIGHT_REQUIREMENT" >&2
fi
