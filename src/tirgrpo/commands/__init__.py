"""Command-line entry points, one module per `tirgrpo` subcommand: argument parsing and
printing only; the work is done by library code elsewhere in the package."""
