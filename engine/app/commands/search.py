"""`engine search`: one query against an index, a Milvus collection or a running server."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.app.client import search_server
from engine.app.commands import (
    INDEX_MODEL,
    backend_option,
    collection_option,
    index_option,
    repaired,
    token_option,
)
from engine.errors import EngineError
from engine.instructions import check_instruction
from engine.options import (
    api_key_option,
    device_option,
    json_option,
    model_option,
    search_knob_options,
    search_mode_options,
)
from indexer.filters import combine, source_glob
from indexer.filters import parse as parse_filter
from indexer.fusion import DEFAULT_MODE, METHODS, MODES, Fusion


@click.command("search")
@click.argument("query")
@index_option
@backend_option
@collection_option
@token_option
@click.option("--instruct", "instruction", help="Task instruction for this query.")
@click.option(
    "--no-instruct", is_flag=True, help="No instruction, not even the index's default one."
)
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits.")
@search_mode_options(
    MODES, METHODS, f"{DEFAULT_MODE}, {Fusion().describe()}; dense on a Milvus backend"
)
@click.option(
    "--where",
    "where",
    metavar="EXPR",
    help="Only documents whose metadata match, e.g. 'extension = \".md\" and size > 1000' "
    "(= != < <= > >=, in (...), glob, and/or/not, parentheses). Applied inside the search.",
)
@click.option(
    "--source", "source_pattern", metavar="GLOB", help="Only documents whose source path matches."
)
@search_knob_options
@model_option(INDEX_MODEL)
@device_option()
@click.option(
    "--server",
    envvar="ENGINE_SERVER",
    show_envvar=True,
    help="Ask a running `engine serve` at this URL instead of loading the model and index.",
)
@api_key_option("The server's API key, if it needs one.")
@json_option()
def search_command(
    query: str,
    index_dir: Path,
    backend: str | None,
    collection: str,
    token: str | None,
    instruction: str | None,
    no_instruct: bool,
    k: int,
    mode: str | None,
    where: str | None,
    source_pattern: str | None,
    fusion: str | None,
    alpha: float | None,
    nprobe: int | None,
    ef_search: int | None,
    model: str | None,
    device: str | None,
    server: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """Search the index for QUERY.

    The query is embedded with the model's instruction template
    (`Instruct: {task}\\nQuery: {query}` for E5-mistral); documents were embedded
    without one, so a new instruction never needs a re-index.

    \b
    Examples:
      engine search "how do plants make sugar"
      engine search "how do plants make sugar" --instruct "Given a question, retrieve passages that answer it" -k 5
      engine search "TCP handshake" --no-instruct --json
      engine search "TCP handshake" --backend ./vectors.db
      engine search "TCP handshake" --backend http://milvus.internal:19530 --token root:Milvus
      engine search "how do plants make sugar" --server http://127.0.0.1:8000
      engine search "TCP handshake" --ef-search 256     # an HNSW index, more exact
      engine search "BRCA1 p.Glu1836fs" --mode lexical   # BM25 only: exact names and codes
      engine search "how do plants make sugar" --mode hybrid --fusion weighted --alpha 0.7
      engine search "TCP handshake" --where 'extension in (".md", ".txt") and size < 100000'
      engine search "TCP handshake" --source 'docs/*'
      engine search "gene therapy" --where 'year >= 2020 and not lang = "de"'  # JSON-lines fields
    """
    query = repaired(query, "the query")
    instruction = repaired(instruction, "--instruct")
    if not query.strip():
        raise EngineError("empty query")
    check_instruction(instruction, no_instruct)
    if server and backend:
        raise EngineError("--server and --backend exclude each other")
    condition = combine(
        parse_filter(where) if where is not None else None,
        source_glob(source_pattern) if source_pattern else None,
    )
    if server:
        answer = search_server(
            server,
            query,
            instruction,
            no_instruct,
            k,
            api_key,
            nprobe=nprobe,
            ef_search=ef_search,
            mode=mode,
            fusion=fusion,
            alpha=alpha,
            where=condition.text if condition is not None else None,
        )
        hits, instruction = answer["results"][0], answer["instruction"]
    else:
        # Here, not at the top: `--server` stays a light client (no torch, no FAISS).
        from engine.api import Index

        if backend:
            opened = Index.open_milvus(backend, collection, token, model=model, device=device)
        else:
            opened = Index.open(index_dir, model=model, device=device)
        with opened as index:
            found = index.search(
                query,
                k,
                instruct=instruction,
                no_instruct=no_instruct,
                mode=mode,
                where=condition,
                fusion=fusion,
                alpha=alpha,
                nprobe=nprobe,
                ef_search=ef_search,
            )
            instruction = index.instruction_for(instruction, no_instruct, mode)  # shown above
        hits = [hit.to_dict() for hit in found]
    if as_json:
        for hit in hits:
            click.echo(json.dumps(hit, ensure_ascii=False))
        return
    if instruction:
        click.echo(f"Instruction: {instruction}")
    if not hits:
        click.echo("No documents in the index.")
    for hit in hits:
        doc_id, source = hit["doc_id"], hit["source"]
        where = doc_id if doc_id == source else f"{doc_id}  [{source}]"
        title = f"  {hit['title']}" if hit["title"] else ""
        click.echo(f"{hit['rank']:>3}. {hit['score']:.4f}  {where}{title}")
        passage = hit.get("passage")
        if passage:  # an index of passages: the best passage and where it lies
            click.echo(
                f"     passage {passage['position'] + 1}, characters "
                f"{passage['char_start']:,}-{passage['char_end']:,}"
            )
        click.echo(f"     {hit['snippet']}")
