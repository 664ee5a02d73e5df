"""`engine bench passkey` (being written)."""

import click

from engine.errors import EngineError


@click.command()
def passkey() -> None:
    """Not written yet."""
    raise EngineError("engine bench passkey is not written yet")
