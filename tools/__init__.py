"""The project's development tools, run from a checkout and never imported by the project: the mutation score of the
core (`python -m tools.mutation`, its table in tools/mutation_modules.toml)."""
