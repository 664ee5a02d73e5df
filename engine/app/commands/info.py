"""`engine info`: what is in an index."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.api import Index
from engine.app.commands import index_option
from engine.options import json_option


@click.command("info")
@index_option
@json_option()
def info_command(index_dir: Path, as_json: bool) -> None:
    """What is in an index: model, dimension, documents, size, dates.

    \b
    Examples:
      engine info
      engine info --index ./my-index --json
    """

    with Index.open(index_dir) as index:
        data = index.info()
    if as_json:
        click.echo(json.dumps(data))
        return
    width = max(len(key) for key in data)
    for key, value in data.items():
        shown = "(none)" if value is None else value
        if isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        if key == "bytes":
            key, shown = "size", f"{value / 2**20:.1f} MiB"
        click.echo(f"{key.replace('_', ' '):<{width}}  {shown}")
