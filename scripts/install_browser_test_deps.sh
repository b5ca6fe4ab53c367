#!/usr/bin/env bash
# The system browser tests/test_space_browser.py drives with Playwright: Debian's chromium (no browser is downloaded).
# Idempotent. Where apt-get is not available it says so and returns: the browser test then skips outside CI.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[browser-deps] no chromium and no apt-get: install Chromium yourself to run the browser test" >&2
  exit 0
fi
echo "[browser-deps] installing Debian's chromium" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium >&2
