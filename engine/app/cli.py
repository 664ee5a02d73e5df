"""The ``engine`` command line: index, search, info, bench, train."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from engine import __version__
from engine.errors import EngineError, ErrorReportingGroup
from engine.options import (
    DEFAULT_MODEL_NOTE,
    api_key_option,
    batch_tokens_option,
    device_option,
    index_type_option,
    json_option,
    model_option,
    precision_option,
    quiet_option,
    search_knob_options,
)
from indexer.passages import DEFAULT_MAX_DOCUMENT_TOKENS, PassageSpec, passage_spec

DEFAULT_INDEX = ".engine"


def quiet_environment() -> None:
    """Library noise off before anything imports transformers (cheap: no imports here)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="engine")
def cli() -> None:
    """Search your documents with LLM text embeddings.

    \b
    Examples:
      engine index ./corpus
      engine search "how do plants make sugar" --instruct "Given a question, retrieve passages that answer it"
      engine info
      engine serve --port 8000
      engine bench beir --data-dir ../shared/data/beir --datasets scifact
      engine train --base all-MiniLM-L6-v2 --data train.jsonl --out ./my-model
    """
    quiet_environment()


@cli.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@index_option
@model_option(INDEX_MODEL)
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    help="Tokens encoded per document (default: the first 512, or the model's maximum if smaller).",
)
@click.option(
    "--instruct",
    "default_instruction",
    help="Default task instruction stored with the index, used by `engine search` when it gets none.",
)
@click.option(
    "--passages",
    "passage_tokens",
    type=click.IntRange(min=1),
    metavar="TOKENS",
    help="Split every document into windows of this many model tokens (title repeated at the "
    "head of each) and search documents by their best passage; the whole document is read "
    "(default: one vector of the first --max-length tokens). Stored with the index.",
)
@click.option(
    "--passage-overlap",
    type=click.IntRange(min=0),
    metavar="TOKENS",
    help="Tokens each passage shares with the one before (default: an eighth of --passages).",
)
@click.option(
    "--max-document-tokens",
    type=click.IntRange(min=1),
    metavar="TOKENS",
    help=f"With --passages: tokens of a document read at most (default {DEFAULT_MAX_DOCUMENT_TOKENS:,}).",
)
@click.option(
    "--rebuild", is_flag=True, help="Start over: re-encode everything into a fresh index."
)
@index_type_option(
    "FAISS index type (default: keep the index's; auto for a new one). Changing it re-uses "
    "the stored vectors: nothing is re-encoded."
)
@batch_tokens_option()
@device_option()
@precision_option()
@click.option("-v", "--verbose", is_flag=True, help="List every skipped file with its reason.")
@quiet_option()
@json_option()
def index(
    corpus: Path,
    index_dir: Path,
    model: str | None,
    max_length: int | None,
    default_instruction: str | None,
    passage_tokens: int | None,
    passage_overlap: int | None,
    max_document_tokens: int | None,
    rebuild: bool,
    index_type: str | None,
    batch_tokens: int | None,
    device: str | None,
    precision: str | None,
    verbose: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Index the documents under CORPUS (a folder or a file).

    Reads .txt .md .rst .html .pdf and BEIR-style .json/.jsonl (_id, title, text)
    recursively. Re-running encodes only new and changed documents and removes
    deleted ones; unreadable files are skipped and reported.

    \b
    Examples:
      engine index ./corpus
      engine index ./corpus --index ./my-index --max-length 256
      engine index ./corpus --model intfloat/e5-mistral-7b-instruct --rebuild
      engine index ./corpus --instruct "Given a question, retrieve passages that answer it"
      engine index ./manuals --passages 256 --passage-overlap 32 --rebuild
        (whole documents in windows of 256 tokens; search returns documents by best passage)
      torchrun --nnodes 2 --nproc_per_node 8 ... -m engine index ./corpus --model ./e5-mistral
        (every rank encodes a share balanced by tokens; rank 0 alone writes the index)
      engine index ./corpus --index-type hnsw
      engine index ./corpus --index-type "IVF4096,SQ8"
    """
    from engine.encoder import Encoder, document_tokens
    from indexer.distributed import IndexingGroup
    from indexer.documents import read_corpus
    from indexer.folder import reporting_damage
    from indexer.indexing import update_index
    from indexer.store import indexed_settings
    from indexer.vector_index import validate_type

    def model_and_length() -> tuple[str | None, int | None, dict | None]:
        """An existing index keeps its model, length and passages unless told otherwise."""
        if not corpus.exists():
            raise EngineError(f"corpus not found: {corpus}")
        if index_type is not None:
            validate_type(index_type)
        asked = passage_spec(passage_tokens, passage_overlap, max_document_tokens)
        if not rebuild:
            with reporting_damage(index_dir):
                stored = indexed_settings(index_dir)
            if stored is not None:
                kept = stored.get("passages") if passage_tokens is None else asked
                return (
                    model or stored["model"],
                    max_length or (None if model else stored["max_length"]),
                    kept,
                )
        return model, max_length, asked

    # Under torchrun every rank encodes; rank 0 alone reads the corpus and writes the index.
    with IndexingGroup() as group:
        chosen_model, chosen_length, chosen_passages = group.writer_decides(model_and_length)
        encoder = Encoder.load(
            chosen_model,
            device=group.device(device),
            batch_tokens=batch_tokens,
            precision=precision,
        )
        encoder.set_max_length(document_tokens(encoder, chosen_length))
        if not group.is_writer:
            group.serve(encoder)
            return
        passages = PassageSpec(**chosen_passages) if chosen_passages else None
        scan = read_corpus(  # lazy: read as indexed
            corpus,
            max_tokens=passages.max_document_tokens if passages else encoder.max_length,
            whole=passages is not None,
        )
        report = update_index(
            index_dir,
            encoder,
            scan,
            rebuild=rebuild,
            default_instruction=default_instruction,
            keep_sources=scan.failed_sources,
            index_type=validate_type(index_type) if index_type is not None else None,
            progress=not quiet and not as_json,
            passages=passages,
        )
    summary = {
        "index": str(index_dir),
        "corpus": str(corpus),
        "model": encoder.name,
        "max_length": encoder.max_length,
        "passages": chosen_passages,
        **report.to_dict(),
        "skipped": len(scan.skipped),
        "ignored_files": scan.ignored,
        "skipped_detail": [{"source": s.source, "reason": s.reason} for s in scan.skipped],
        "notes": [{"source": n.source, "message": n.message} for n in scan.notes],
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"Indexed {corpus} into {index_dir} with {encoder.name} (max {encoder.max_length} tokens): "
        f"{report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged; {report.total} documents; index {report.index}."
    )
    if report.encoded:
        split = f" in {report.passages:,} passages" if passages else ""
        click.echo(
            f"Encoded {report.encoded} documents{split} ({report.encoded_tokens:,} tokens) "
            f"in {report.seconds:.1f}s, {report.encoded / report.seconds:.1f} docs/s"
            + (f" on {report.ranks} ranks." if report.ranks > 1 else ".")
        )
    if scan.skipped:
        hint = "" if verbose else " (--verbose lists them)"
        click.echo(f"Skipped {len(scan.skipped)} unreadable files or records{hint}.")
        if verbose:
            for skipped in scan.skipped:
                click.echo(f"  {skipped.source}: {skipped.reason}")
    if scan.notes:
        hint = "" if verbose else " (--verbose lists them)"
        click.echo(f"{len(scan.notes)} warnings from file parsers{hint}.")
        if verbose:
            for note in scan.notes:
                click.echo(f"  {note.source}: {note.message}")
    if report.kept_sources:
        click.echo(f"Kept the indexed documents of {len(report.kept_sources)} unreadable files.")


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


@cli.command()
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
def search(
    query: str,
    index_dir: Path,
    backend: str | None,
    collection: str,
    token: str | None,
    instruction: str | None,
    no_instruct: bool,
    k: int,
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
    """
    if not query.strip():
        raise EngineError("empty query")
    if instruction and no_instruct:
        raise EngineError("--instruct and --no-instruct exclude each other")
    if server and backend:
        raise EngineError("--server and --backend exclude each other")
    if server:
        from engine.app.client import search_server

        answer = search_server(
            server, query, instruction, no_instruct, k, api_key, nprobe=nprobe, ef_search=ef_search
        )
        hits, instruction = answer["results"][0], answer["instruction"]
    else:
        from indexer.search import load_encoder_for, resolve_instruction
        from indexer.search import search as run_search

        if backend:
            from indexer.milvus import MilvusIndex

            searched = MilvusIndex.open(backend, collection, token)
        else:
            from indexer.store import Store

            searched = Store.open(index_dir)
        instruction = resolve_instruction(searched, instruction, no_instruct)
        encoder = load_encoder_for(searched, model, device)
        found = run_search(
            searched,
            [query],
            k=k,
            instruction=instruction,
            encoder=encoder,
            nprobe=nprobe,
            ef_search=ef_search,
        )[0]
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
        if passage:
            click.echo(
                f"     passage {passage['position'] + 1}, characters "
                f"{passage['char_start']:,}-{passage['char_end']:,}"
            )
        click.echo(f"     {hit['snippet']}")


@cli.command()
@index_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="ENGINE_HOST",
    show_envvar=True,
    help="Address to listen on (0.0.0.0 exposes it to the network: set --api-key).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    envvar="ENGINE_PORT",
    show_envvar=True,
    help="TCP port.",
)
@model_option(INDEX_MODEL)
@device_option()
@api_key_option("Require `Authorization: Bearer KEY` on every route but /health.")
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="How long a forward pass waits for more requests to join it.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Requests that may wait for the encoder; more get 503 with Retry-After.",
)
@click.option("--access-log", is_flag=True, help="Log every request.")
@backend_option
@collection_option
@token_option
def serve(
    index_dir: Path,
    host: str,
    port: int,
    model: str | None,
    device: str | None,
    api_key: str | None,
    batch_wait_ms: float,
    queue_size: int,
    access_log: bool,
    backend: str | None,
    collection: str,
    token: str | None,
) -> None:
    """Serve search and embeddings over HTTP, with a search page at /.

    The model and the index are loaded once; concurrent requests are embedded
    together. When `engine index` publishes a new generation of the index, the
    next request answers from it. Stops cleanly on Ctrl-C or SIGTERM.

    \b
    API (OpenAPI at /docs):
      GET  /search?q=...&k=10      POST /search {"query": "...", "instruct": "...", "k": 10}
      (both take nprobe / ef_search for an IVF / HNSW index)
      POST /v1/embeddings          OpenAI-compatible (+ input_type query|document, instruct)
      GET  /health                 GET /info

    \b
    Examples:
      engine serve
      engine serve --index ./my-index --port 9000
      ENGINE_API_KEY=secret engine serve --host 0.0.0.0
      curl 'http://127.0.0.1:8000/search?q=how+do+plants+make+sugar&k=3'
      engine serve --backend http://milvus.internal:19530 --token root:Milvus
    """
    from engine.app.batcher import Limits
    from engine.app.server import run_server

    milvus = None
    if backend:
        from indexer.milvus import MilvusIndex

        milvus = MilvusIndex.open(backend, collection, token)
    limits = Limits(queue_size=queue_size, batch_wait=batch_wait_ms / 1000)
    run_server(
        index_dir,
        host=host,
        port=port,
        model=model,
        device=device,
        api_key=api_key or None,
        limits=limits,
        access_log=access_log,
        backend=milvus,
    )


@cli.group()
def export() -> None:
    """Copy an index's vectors and documents into another system.

    \b
    Examples:
      engine export milvus ./vectors.db
      engine export milvus http://milvus.internal:19530 --token root:Milvus --index-type hnsw
    """


@export.command("milvus")
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
    from indexer.milvus import export_index
    from indexer.store import Store

    store = Store.open(index_dir)
    try:
        report = export_index(
            store,
            uri,
            collection=collection,
            token=token,
            index_type=index_type,
            rebuild=rebuild,
            progress=not quiet and not as_json,
        )
    finally:
        store.close()
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


@cli.command()
@index_option
@json_option()
def info(index_dir: Path, as_json: bool) -> None:
    """What is in an index: model, dimension, documents, size, dates.

    \b
    Examples:
      engine info
      engine info --index ./my-index --json
    """
    from indexer.folder import reporting_damage
    from indexer.info import index_info
    from indexer.store import Store

    with reporting_damage(index_dir):
        store = Store.open(index_dir)
        data = index_info(store, index_dir)
        store.close()
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


@cli.command()
@index_option
@click.option(
    "--repair", is_flag=True, help="Rebuild what is damaged from what is sound, and say what."
)
@json_option()
def check(index_dir: Path, repair: bool, as_json: bool) -> None:
    """Verify an index: pointer, SQLite integrity, documents and vectors, snapshot, model.

    Checks that CURRENT names an existing database, SQLite's quick_check, the
    recorded model fingerprint, dimension and max length, that documents and
    vectors match one to one, and the FAISS snapshot against the checksum
    recorded when it was written. Exits 1 when a problem remains.

    --repair points a lost CURRENT back at the last published database, salvages
    a damaged database into a fresh one (documents whose vector is lost are left
    for the next `engine index` to re-encode) and rebuilds the snapshot from SQLite.

    \b
    Examples:
      engine check
      engine check --index ./my-index --repair
      engine check --json
    """
    from indexer.folder import reporting_damage
    from indexer.integrity import check_index

    with reporting_damage(index_dir):
        report = check_index(index_dir, repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"Index {index_dir} ({report.database or 'no database'}):")
        for finding in report.findings:
            click.echo(
                f"  {'ok' if finding.ok else 'FAILED':<7} {finding.check:<10} {finding.detail}"
            )
        for action in report.repairs:
            click.echo(f"  repaired: {action}")
        for finding in report.after or []:
            if not finding.ok:
                click.echo(f"  still failing: {finding.check}: {finding.detail}")
        if report.ok:
            click.echo("Index is sound." if not report.repairs else "Index repaired and sound.")
        else:
            hint = "" if repair else f" (`engine check --repair --index {index_dir}`)"
            click.echo(f"Index has problems{hint}.")
    if not report.ok:
        sys.exit(1)


def _attach_subcommands() -> None:
    from bench.cli import bench
    from train.cli import train

    cli.add_command(bench)
    cli.add_command(train)


_attach_subcommands()


def main() -> None:  # pragma: no cover - console entry
    cli(prog_name="engine")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
