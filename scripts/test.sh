#!/usr/bin/env bash
# The whole test suite: sets up .venv if needed, then runs pytest. Extra arguments go to pytest.
# pytest's exit code 5 (no test collected) is turned into a failure: a run that tested nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
