"""`engine bench beir` (being written)."""

import click

from engine.errors import EngineError


@click.command()
def beir() -> None:
    """Not written yet."""
    raise EngineError("engine bench beir is not written yet")
