#!/usr/bin/env bash
# The whole test suite: sets up .venv (and the system browser of the Space's end-to-end test) if needed, checks the
# code with ruff (lint, then formatting), then runs pytest. Extra arguments go to pytest. A ruff finding fails the
# command, after pytest has run; pytest's exit code 5 (no test collected) is turned into a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/install_browser_test_deps.sh || exit 1
lint=0
.venv/bin/ruff check . || lint=1
.venv/bin/ruff format --check . || lint=1
# The Hub remote code is checked on several transformers releases, each in an environment of its own.
bash scripts/setup_transformers_envs.sh >/dev/null || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
if [ $rc -eq 0 ] && [ $lint -ne 0 ]; then
  echo "error: ruff found problems (see above); 'ruff check --fix .' and 'ruff format .' fix most" >&2
  exit 1
fi
exit $rc
