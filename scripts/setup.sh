#!/usr/bin/env bash
# Creates .venv (once) and installs the project with its development extras.
# PyTorch is pinned to the CPU build first, so that the range in pyproject.toml is already met and
# pip never pulls a multi-GB CUDA build. Re-running is cheap: a stamp records what was installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${HARMOCLIP_VENV:-.venv}
EXTRAS=${HARMOCLIP_EXTRAS:-dev}
TORCH_PIN=${HARMOCLIP_TORCH:-torch==2.13.0}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
# transformers' own common test suites of the installed release, into a cache outside the repository (cheap once there).
fetch_peer_suites() {
  PYTHON="$VENV/bin/python" bash scripts/fetch_transformers_tests.sh >/dev/null \
    || echo "[setup] warning: could not fetch transformers' test suites (tests/test_transformers_conformance.py)" >&2
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  fetch_peer_suites
  exit 0
fi
echo "[setup] installing into $VENV (extras: $EXTRAS)" >&2
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "$TORCH_PIN" >&2
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]" >&2
echo "$want" > "$stamp"
fetch_peer_suites
