"""Stand-ins for the modules transformers' common test files import from sub-folders of its `tests/` that its source
distribution does not ship (`exporters/test_export.py`, `generation/test_utils.py`,
`utils/test_configuration_utils.py`). Each file says which check it stands for; `transformers_suites` installs them
under the names the common files import."""
