"""`engine index`: encode a corpus into an index folder, incrementally."""

from __future__ import annotations

import json
from pathlib import Path

import click

from engine.app.commands import INDEX_MODEL, index_option, repaired
from engine.options import (
    batch_tokens_option,
    device_option,
    index_type_option,
    json_option,
    model_option,
    passage_options,
    precision_option,
    quiet_option,
    runtime_option,
)
from indexer.passages import DEFAULT_MAX_DOCUMENT_TOKENS


@click.command("index")
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
@passage_options(
    "Split every document into windows of this many model tokens (title repeated at the "
    "head of each) and search documents by their best passage; the whole document is read "
    "(default: one vector of the first --max-length tokens). Stored with the index."
)
@click.option(
    "--max-document-tokens",
    type=click.IntRange(min=1),
    metavar="TOKENS",
    help="With --passages: tokens of a document read and encoded at most "
    f"(default {DEFAULT_MAX_DOCUMENT_TOKENS:,}).",
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
@runtime_option()
@click.option("-v", "--verbose", is_flag=True, help="List every skipped file with its reason.")
@quiet_option()
@json_option()
def index_command(
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
    runtime: str | None,
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
    from engine.api import Index  # torch loads inside, when the model does

    done = Index(index_dir, model=model, device=device).index_folder(
        corpus,
        rebuild=rebuild,
        max_length=max_length,
        default_instruction=repaired(default_instruction, "--instruct"),
        passages=passage_tokens,
        passage_overlap=passage_overlap,
        max_document_tokens=max_document_tokens,
        index_type=index_type,
        batch_tokens=batch_tokens,
        precision=precision,
        runtime=runtime,
        progress=not quiet and not as_json,
    )
    if done is None:  # a torchrun rank that encoded for the writer
        return
    report, scan = done.report, done.scan
    summary = {"index": str(index_dir), "corpus": str(corpus), **done.to_dict()}
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"Indexed {corpus} into {index_dir} with {done.model} (max {done.max_length} tokens): "
        f"{report.added} added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged"
        + (f" ({report.metadata_updated} with new metadata)" if report.metadata_updated else "")
        + f"; {report.total} documents; index {report.index_type}."
    )
    if report.encoded:
        split = f" in {report.passages:,} passages" if done.passage_setting else ""
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
