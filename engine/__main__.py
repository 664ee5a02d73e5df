"""``python -m engine`` runs the CLI."""

from engine.app.cli import cli

cli(prog_name="engine")
