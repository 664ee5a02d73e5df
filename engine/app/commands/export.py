"""`engine export milvus`: mirror an index into a Milvus collection."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.api import Index
from engine.app.commands import collection_option, index_option, token_option
from engine.options import json_option, quiet_option


@click.group("export")
def export_group() -> None:
    """Copy an index's vectors and documents into another system.

    \b
    Examples:
      engine export milvus ./vectors.db
      engine export milvus http://milvus.internal:19530 --token root:Milvus --index-type hnsw
    """


@export_group.command("milvus")
@click.argument("uri")
@index_option
@collection_option
@token_option
@click.option(
    "--index-type",
    default="auto",
    show_default=True,
    help="Milvus vector index: flat (exact), hnsw, ivf (IVF_FLAT), ivf-sq8, autoindex; auto "
    "keeps an existing collection's index, else flat below 100k documents and hnsw above.",
)
@click.option(
    "--rebuild", is_flag=True, help="Drop the collection first (also one made by another model)."
)
@quiet_option()
@json_option()
def export_milvus(
    uri: str,
    index_dir: Path,
    collection: str,
    token: str | None,
    index_type: str,
    rebuild: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Mirror the index into a Milvus collection at URI.

    URI is a Milvus Lite path ending in .db (embedded, no server) or a server
    address (http://host:19530). Re-running upserts only documents that changed
    since the last export and deletes those removed from the index. The
    collection remembers the model, so `engine search --backend URI` embeds
    queries the same way and refuses a collection made by another model.

    \b
    Examples:
      engine export milvus ./vectors.db
      engine export milvus ./vectors.db --index-type hnsw
      engine export milvus http://localhost:19530 --collection scifact --token root:Milvus
    """

    with Index.open(index_dir) as index:
        report = index.export_milvus(
            uri,
            collection,
            token=token,
            index_type=index_type,
            rebuild=rebuild,
            progress=not quiet and not as_json,
        )
    if as_json:
        click.echo(
            json.dumps(
                {"index": str(index_dir), "uri": uri, "collection": collection, **report.to_dict()}
            )
        )
        return
    click.echo(
        f"Exported {index_dir} to collection {collection!r} at {uri} ({report.index_type}): "
        f"{report.upserted} upserted, {report.removed} removed, {report.unchanged} unchanged; "
        f"{report.total} documents in {report.seconds:.1f}s."
    )
