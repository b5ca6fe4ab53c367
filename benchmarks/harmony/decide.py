"""Deprecated: `python -m benchmarks.harmony.decide` runs `python -m experiments.harmony.decide`, for one release."""

if __name__ == "__main__":
    import runpy
    import sys

    print(
        "warning: `python -m benchmarks.harmony.decide` is deprecated; use `python -m experiments.harmony.decide`",
        file=sys.stderr,
    )
    runpy.run_module("experiments.harmony.decide", run_name="__main__", alter_sys=True)
