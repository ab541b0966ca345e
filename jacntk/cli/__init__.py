"""The ``jacntk`` command line: one module per group of subcommands."""
