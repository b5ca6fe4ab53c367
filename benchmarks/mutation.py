"""Deprecated name of the mutation-testing driver, which moved to the development tools: `python -m tools.mutation`.
`python -m benchmarks.mutation` still runs it, for one release."""

if __name__ == "__main__":
    import runpy
    import sys

    print("warning: `python -m benchmarks.mutation` is deprecated; use `python -m tools.mutation`", file=sys.stderr)
    runpy.run_module("tools.mutation", run_name="__main__", alter_sys=True)
