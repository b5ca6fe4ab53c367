#!/usr/bin/env bash
# Fetches the common test suites of the installed transformers release (ModelTesterMixin, ConfigTester, the pipeline
# mixin and the other top-level files of its `tests/`) from that release's source distribution on PyPI, into a cache
# outside the repository:
#     ${HARMOCLIP_CACHE:-~/.cache/harmoclip}/transformers-tests/<version>/transformers_tests/
# tests/test_transformers_conformance.py imports them from there. Re-running is free once the cache holds a version.
# The source distribution holds only the top-level files of `tests/`; the test suite stands in for the few modules they
# import from sub-folders (tests/peer_stand_ins/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
version=$("$PYTHON" -c "import transformers; print(transformers.__version__)")
cache_root=${HARMOCLIP_CACHE:-$HOME/.cache/harmoclip}
target="$cache_root/transformers-tests/$version"
if [ -f "$target/transformers_tests/.complete" ]; then
  echo "$target"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "[fetch_transformers_tests] downloading the source distribution of transformers==$version" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "transformers==$version" -d "$work" >&2 \
  || "$PYTHON" -m pip download -q --no-deps --no-binary :all: "transformers==$version" -d "$work" >&2
archive=$(ls "$work"/transformers-*.tar.gz)
tar -xzf "$archive" -C "$work" --wildcards "transformers-$version/tests/*.py"
# Built beside the target and moved in at the end: an interrupted fetch never leaves a half-written cache.
mkdir -p "$target"
staging=$(mktemp -d "$target/.staging.XXXXXX")
mkdir "$staging/transformers_tests"
find "$work/transformers-$version/tests" -maxdepth 1 -name "*.py" -exec cp {} "$staging/transformers_tests/" \;
for name in test_modeling_common.py test_configuration_common.py test_pipeline_mixin.py; do
  [ -f "$staging/transformers_tests/$name" ] || { echo "error: $name is not in $(basename "$archive")" >&2; exit 1; }
done
: > "$staging/transformers_tests/__init__.py"  # a package, for their relative imports; empty on purpose
echo "$version" > "$staging/transformers_tests/.complete"
rm -rf "$target/transformers_tests"
mv "$staging/transformers_tests" "$target/transformers_tests"
rmdir "$staging"
echo "$target"
