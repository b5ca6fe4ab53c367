"""Experiments: runs that train and compare recipes and report what they found (the harmony benchmark,
`python -m experiments.harmony`). Unlike `benchmarks/`, which measures speed and memory, an experiment's figures are
about what the models learn."""
