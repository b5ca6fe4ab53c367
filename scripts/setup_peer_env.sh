#!/usr/bin/env bash
# Creates .venv-peer (once): the environment of the open_clip peer benchmark (benchmarks/peer_open_clip.py).
# open_clip needs torchvision, which cannot sit beside the CPU torch pinned in .venv; torch 2.14.1 and
# torchvision 0.29.1 install together, so the peer benchmark gets its own environment with them, open_clip_torch
# and this project (editable). Nothing else uses it; the test suite does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${HARMOCLIP_PEER_VENV:-.venv-peer}
PINS=(torch==2.14.1 torchvision==0.29.1 "open_clip_torch>=3,<4")

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.setup-stamp"
want=$(cat pyproject.toml scripts/setup_peer_env.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup-peer] installing into $VENV: ${PINS[*]} and the project" >&2
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "${PINS[@]}" >&2
"$VENV/bin/python" -m pip install -q -e . >&2
"$VENV/bin/python" -c "import open_clip, torch, torchvision; print('[setup-peer] open_clip', open_clip.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)" >&2
echo "$want" > "$stamp"
