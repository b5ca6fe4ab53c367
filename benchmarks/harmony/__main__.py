"""Deprecated: `python -m benchmarks.harmony` runs `python -m experiments.harmony`, for one release."""

if __name__ == "__main__":
    import runpy
    import sys

    print("warning: `python -m benchmarks.harmony` is deprecated; use `python -m experiments.harmony`", file=sys.stderr)
    # The new command's own __main__ runs, so its process set-up and its `main` stay in one place.
    runpy.run_module("experiments.harmony", run_name="__main__", alter_sys=True)
