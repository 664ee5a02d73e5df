"""`engine bench speed` (being written)."""

import click

from engine.errors import EngineError


@click.command()
def speed() -> None:
    """Not written yet."""
    raise EngineError("engine bench speed is not written yet")
