"""Deprecated names of the harmony benchmark, which moved to the experiments: `python -m experiments.harmony` (console
script `harmoclip-harmony`) and `python -m experiments.harmony.decide`. `python -m benchmarks.harmony` and
`python -m benchmarks.harmony.decide` still run them, for one release. This package imports nothing: the moved command
sets up its process (OpenMP's wait policy) before torch loads."""
