"""``python -m engine`` runs the CLI."""

from engine.cli import cli

cli(prog_name="engine")
