"""`engine bench ...` commands."""

import click


@click.group()
def bench() -> None:
    """Run benchmarks: BEIR retrieval, passkey retrieval, encoding speed."""
