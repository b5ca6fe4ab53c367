#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv if needed, then generates the synthetic data set, trains a tiny
# HarmoCLIP on the CPU, evaluates it, saves the Hub-ready model and loads it back to label a held-out image.
# Extra arguments override training options, e.g.: bash scripts/run_default.sh --max_steps 50
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m scripts.run_default "$@"
