#!/usr/bin/env bash
# Sets up one virtual environment per transformers release the Hub remote code must run on, for
# tests/test_remote_code_versions.py: the last 4.x (4.57.6), the first 5.x (5.0.0) and the newest 5.x release on the
# package index. Each holds what a user loading the model has: PyTorch's CPU build from the local wheel (pinned first,
# as in setup.sh, so that no multi-GB CUDA build is pulled), that transformers and Pillow; never this project.
#     .venv-transformers/<version>/
# The environments are built side by side in the background and a stamp marks each finished one, so an interrupted
# set-up is redone and a finished one costs nothing. Prints the finished environments' folders, one a line.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ROOT=${HARMOCLIP_TRANSFORMERS_ENVS:-.venv-transformers}
TORCH_PIN=${HARMOCLIP_TORCH:-torch==2.13.0}
# The newest release below 6 on the index (what `pip install transformers` gives a 5.x user today); the main
# environment's version when the index cannot be asked.
newest=$(.venv/bin/python -m pip index versions 'transformers' 2>/dev/null | sed -n 's/^Available versions: //p' \
  | tr ',' '\n' | tr -d ' ' | grep -E '^5\.' | head -1)
[ -n "$newest" ] || newest=$(.venv/bin/python -c "import transformers; print(transformers.__version__)")
versions=${HARMOCLIP_TRANSFORMERS_VERSIONS:-"4.57.6 5.0.0 $newest"}

build() {
  local version=$1 env="$ROOT/$1"
  [ -f "$env/.complete" ] && return 0
  rm -rf "$env"
  "$PYTHON" -m venv "$env" \
    && "$env/bin/python" -m pip install -q --upgrade pip \
    && "$env/bin/python" -m pip install -q "$TORCH_PIN" \
    && "$env/bin/python" -m pip install -q "transformers==$version" pillow \
    && touch "$env/.complete"
}

mkdir -p "$ROOT"
pids=()
for version in $versions; do
  build "$version" > "$ROOT/$version.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for version in $versions; do
  if [ -f "$ROOT/$version/.complete" ]; then
    echo "$ROOT/$version"
  else
    echo "[setup_transformers_envs] transformers $version: set-up failed, see $ROOT/$version.log" >&2
  fi
done
exit $status
