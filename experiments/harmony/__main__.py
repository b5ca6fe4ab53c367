"""`python -m experiments.harmony`: the harmony benchmark as a command."""

if __name__ == "__main__":
    import os
    import sys

    # Before torch loads OpenMP: idle threads sleep instead of spinning. On a 2-core machine shared with other jobs,
    # spinning threads made these small models' training steps about 8 times slower. A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from experiments.harmony.command_line import main

    sys.exit(main())
