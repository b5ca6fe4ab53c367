#!/usr/bin/env bash
# The whole test suite: sets up .venv (and the system browser of the Space's end-to-end test) if needed, then runs
# pytest. Extra arguments go to pytest. pytest's exit code 5 (no test collected) is turned into a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
bash scripts/install_browser_test_deps.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
