"""The `budgetlm` commands: one thin module each.

Every module exposes `add_arguments(parser)` and `run(args) -> dict | None`: it turns the parsed
flags into a config, calls `budgetlm.api` (or a library function), and prints for humans. The dict
it returns is what `--json` prints.
"""
