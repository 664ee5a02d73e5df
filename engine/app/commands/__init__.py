"""The `engine` subcommands, one module each, and the options several of them share.

:mod:`engine.app.cli` imports a command's module only when that command is used, so
a module here imports at its top what its command needs, except what would load
torch for ``--help`` or an argument error (those imports stay in the function).
"""

from __future__ import annotations

from pathlib import Path

import click

from engine.options import DEFAULT_MODEL_NOTE
from engine.text import repair_text, unencodable

DEFAULT_INDEX = ".engine"


def repaired(text: str | None, what: str) -> str | None:
    """A command-line text whose bytes are not UTF-8 (``printf 'caf\\xe9'``), with each such
    byte replaced by U+FFFD and one warning line; valid text as it is."""
    if text is None or unencodable(text) is None:
        return text
    click.echo(
        f"Warning: {what} is not valid UTF-8; undecodable bytes replaced by U+FFFD", err=True
    )
    return repair_text(text)


index_option = click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_INDEX,
    show_default=True,
    envvar="ENGINE_INDEX",
    show_envvar=True,
    help="Index folder.",
)
INDEX_MODEL = f"the model an existing index was built with, else {DEFAULT_MODEL_NOTE}"

collection_option = click.option(
    "--collection",
    default="engine",
    show_default=True,
    envvar="ENGINE_MILVUS_COLLECTION",
    show_envvar=True,
    help="Milvus collection.",
)
token_option = click.option(
    "--token",
    envvar="ENGINE_MILVUS_TOKEN",
    show_envvar=True,
    help="Milvus token (user:password or an API key) for a server that needs one.",
)
backend_option = click.option(
    "--backend",
    metavar="URI",
    envvar="ENGINE_BACKEND",
    show_envvar=True,
    help="Use a Milvus collection written by `engine export milvus` instead of the local "
    "index: a Milvus Lite path (./vectors.db) or a server (http://host:19530).",
)
