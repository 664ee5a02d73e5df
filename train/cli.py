"""`engine train ...` commands."""

import click


@click.group()
def train() -> None:
    """Fine-tune an embedding model with contrastive LoRA training."""
