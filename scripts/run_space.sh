#!/usr/bin/env bash
# Starts the demo Space (space/app.py) locally, by default at http://127.0.0.1:7860.
#   bash scripts/run_space.sh                              # the tiny model of the README's main command
#   HARMOCLIP_MODEL=org/harmoclip-vitb16 bash scripts/run_space.sh   # a Hub id or a local model folder
# Sets up .venv (scripts/setup.sh) and adds the `space` extra (Gradio) if it is missing. Without HARMOCLIP_MODEL and
# without outputs/synthetic_tiny/model, it first trains that model (configs/synthetic_tiny.yaml, a few minutes on a CPU).
# GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose the address; Gradio's analytics stay off unless asked for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${HARMOCLIP_VENV:-.venv}

bash scripts/setup.sh
if ! "$VENV/bin/python" -c "import gradio" 2>/dev/null; then
  echo "[run_space] installing the space extra (gradio) into $VENV" >&2
  "$VENV/bin/python" -m pip install -q -e ".[space]" >&2
fi
if [ -z "${HARMOCLIP_MODEL:-}" ] && [ ! -d outputs/synthetic_tiny/model ]; then
  echo "[run_space] no model yet: training the tiny default (python training/train.py --config configs/synthetic_tiny.yaml)" >&2
  "$VENV/bin/python" training/train.py --config configs/synthetic_tiny.yaml
fi
export GRADIO_ANALYTICS_ENABLED=${GRADIO_ANALYTICS_ENABLED:-False}
export GRADIO_SERVER_NAME=${GRADIO_SERVER_NAME:-127.0.0.1}
exec "$VENV/bin/python" space/app.py
