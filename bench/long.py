"""`engine bench long`: retrieval over long documents, built from a BEIR corpus.

A BEIR corpus is shuffled and its documents concatenated (as ``title text``, one
paragraph each) into files of about N tokens; a query is relevant to a file when it
is relevant to any document in it (the highest grade counts). Each file size is
indexed twice, as `engine index` would: the first ``--max-length`` tokens of each
file (the default) and passages (``--passages``, a file scored by its best passage),
and nDCG@10 is computed at file level. The short-document figure beside them is the
dataset's own nDCG@10 (first 512 tokens of each original document, the paper's
protocol). Indexing time and index size per corpus token are recorded for every mode.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench.common import command_line, machine
from bench.datasets import load_beir
from bench.metrics import evaluate_run
from engine.options import (
    batch_tokens_option,
    device_option,
    json_option,
    model_option,
    passage_options,
    precision_option,
    quiet_option,
    results_dir_option,
)
from indexer.documents import Document
from indexer.passages import PassageSpec, passage_spec

DEFAULT_FILE_TOKENS = "2048,8192"
TOP_K = 100
# The other document score measured on passages: the sum of a document's best few passages
# (among the PASSAGE_FETCH best of the whole index), beside the max rule search uses.
SUM_OF_TOP = 3
PASSAGE_FETCH = 1000


def pack_files(
    documents: list[Document], lengths: list[int], file_tokens: int
) -> tuple[list[Document], dict[str, str]]:
    """Documents (in the given order) joined into files of at least ``file_tokens`` tokens
    (the last file takes what is left); and which file each document went into."""
    files: list[Document] = []
    owner: dict[str, str] = {}
    parts: list[str] = []
    tokens = 0

    def close() -> None:
        nonlocal parts, tokens
        name = f"file{len(files):05d}"
        files.append(Document(name, "long", "", "\n\n".join(parts)))
        parts, tokens = [], 0

    for document, length in zip(documents, lengths, strict=True):
        owner[document.doc_id] = f"file{len(files):05d}"
        parts.append(f"{document.title} {document.text}".strip())
        tokens += length
        if tokens >= file_tokens:
            close()
    if parts:
        close()
    return files, owner


def file_qrels(
    qrels: dict[str, dict[str, int]], owner: dict[str, str]
) -> dict[str, dict[str, int]]:
    """A file is as relevant to a query as its most relevant document."""
    result: dict[str, dict[str, int]] = {}
    for query, judged in qrels.items():
        files: dict[str, int] = {}
        for doc_id, grade in judged.items():
            if doc_id in owner:
                name = owner[doc_id]
                files[name] = max(files.get(name, grade), grade)
        result[query] = files
    return result


def subset_qrels(qrels: dict[str, dict[str, int]], kept: set[str]) -> dict[str, dict[str, int]]:
    """Judgements on the kept documents, for the queries with a relevant one among them."""
    subset = {q: {d: g for d, g in judged.items() if d in kept} for q, judged in qrels.items()}
    return {q: judged for q, judged in subset.items() if any(g > 0 for g in judged.values())}


def sum_of_top_passages(
    store, vectors, k: int, top: int = SUM_OF_TOP, fetch: int = PASSAGE_FETCH
) -> list[dict[str, float]]:
    """Per query, the ``k`` documents whose ``top`` best passages (among the ``fetch`` best
    passages of the index, dense) have the highest sum: the aggregate the max rule is
    measured against."""
    scores, ids = store.search(vectors, fetch)
    owner = {
        row["passage"]["id"]: row["doc_id"]
        for row in store.get_passages({int(i) for i in ids.ravel() if i >= 0})
    }
    runs = []
    for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
        best: dict[str, list[float]] = {}
        for score, passage in zip(row_scores, row_ids, strict=True):
            if passage in owner:
                best.setdefault(owner[passage], []).append(score)  # best first
        totals = {doc: sum(found[:top]) for doc, found in best.items()}
        runs.append(dict(sorted(totals.items(), key=lambda item: -item[1])[:k]))
    return runs


def index_and_score(
    encoder,
    documents: list[Document],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    *,
    instruction: str | None,
    passages: PassageSpec | None,
    corpus_tokens: int,
) -> dict[str, Any]:
    """Index ``documents`` in a scratch folder (as `engine index` does), search every query,
    score the run (dense; a file scores its best passage); with the indexing time and the
    index size per corpus token. ``rankings`` scores the same index ranked otherwise:
    hybrid (engine search's default) and, on passages, the sum of the best passages."""
    from indexer.indexing import update_index
    from indexer.search import hits_for
    from indexer.store import Store

    def as_run(found) -> dict[str, dict[str, float]]:
        return {q: {hit.doc_id: hit.score for hit in hits} for q, hits in zip(query_ids, found, strict=True)}  # fmt: skip

    others = {}
    with tempfile.TemporaryDirectory(prefix="bench-long-") as folder:
        report = update_index(folder, encoder, documents, passages=passages, progress=False)
        store = Store.open(folder)
        try:
            size = store.stats()["bytes"]
            query_ids = list(queries)
            texts = [queries[q] for q in query_ids]
            vectors = encoder.encode_queries(texts, instruction)
            started = time.perf_counter()
            run = as_run(hits_for(store, vectors, TOP_K))
            searched = time.perf_counter() - started
            others["hybrid"] = as_run(hits_for(store, vectors, TOP_K, queries=texts, mode="hybrid"))
            if passages is not None:
                summed = sum_of_top_passages(store, vectors, TOP_K)
                others[f"dense, sum of the best {SUM_OF_TOP} passages"] = dict(
                    zip(query_ids, summed, strict=True)
                )
        finally:
            store.close()
    metrics = evaluate_run(qrels, run)
    rankings = {}
    for label, other in others.items():
        scored = evaluate_run(qrels, other)
        rankings[label] = {"ndcg@10": scored["ndcg@10"], "recall@100": scored.get("recall@100")}
    return {
        "mode": f"passages {passages.tokens} (overlap {passages.overlap})" if passages else
        f"first {encoder.max_length} tokens",
        "ndcg@10": metrics["ndcg@10"],
        "recall@100": metrics.get("recall@100"),
        "metrics": metrics,
        "documents": len(documents),
        "vectors": report.passages or report.encoded,
        "encoded_tokens": report.encoded_tokens,
        "index_seconds": round(report.seconds, 2),
        "index_bytes": size,
        "seconds_per_million_corpus_tokens": round(report.seconds / corpus_tokens * 1e6, 2),
        "index_bytes_per_corpus_token": round(size / corpus_tokens, 2),
        "search_seconds": round(searched, 3),
        "rankings": rankings,
    }  # fmt: skip


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    required=True,
    help="One BEIR dataset folder (corpus.jsonl, queries.jsonl, qrels/).",
)
@click.option("--split", help="qrels split (default: test; dev for msmarco).")
@click.option(
    "--file-tokens",
    default=DEFAULT_FILE_TOKENS,
    show_default=True,
    help="Sizes of the long documents in tokens, comma-separated.",
)
@passage_options("Passage size of the passages mode.", default=256)
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=512,
    show_default=True,
    help="Tokens of each file the first-tokens mode encodes (and of each original document).",
)
@click.option(
    "--documents",
    type=click.IntRange(min=1),
    help="Use only the first N documents of the shuffled corpus (and the queries judged on "
    "them): a run that fits a small CPU budget (default: all).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Shuffle of the corpus.")
@model_option()
@batch_tokens_option()
@device_option()
@precision_option()
@results_dir_option("results JSON")
@quiet_option()
@json_option()
def long(
    data_dir: Path,
    split: str | None,
    file_tokens: str,
    passage_tokens: int,
    passage_overlap: int | None,
    max_length: int,
    documents: int | None,
    seed: int,
    model: str | None,
    batch_tokens: int | None,
    device: str | None,
    precision: str | None,
    out: Path,
    quiet: bool,
    as_json: bool,
) -> None:
    """Long-document retrieval from a BEIR corpus: first tokens against passages.

    The corpus is concatenated into files of about N tokens; a query is relevant to a
    file when relevant to any part of it; nDCG@10 at file level for the first
    --max-length tokens of each file and for passages, beside the short-document
    nDCG@10 of the original corpus; indexing time and index size per corpus token.

    \b
    Examples:
      engine bench long --data-dir ../shared/data/beir/scifact --out bench/results
      engine bench long --data-dir ../shared/data/beir/nfcorpus --file-tokens 2048 --passages 128
      engine bench long --data-dir ../shared/data/beir/scifact --documents 1000
    """
    from bench.beir import PROFILE_DEFAULT, resolve_instruction
    from engine.encoder import Encoder
    from engine.errors import EngineError
    from indexer.folder import utc_now

    try:
        sizes = [int(n) for n in file_tokens.split(",") if n.strip()]
    except ValueError:
        raise EngineError(f"--file-tokens must be whole numbers, not {file_tokens!r}") from None
    if not sizes or min(sizes) < 1:
        raise EngineError("--file-tokens needs at least one positive size")
    data = load_beir(data_dir, split)
    encoder = Encoder.load(model, device=device, batch_tokens=batch_tokens, precision=precision)
    encoder.set_max_length(min(max_length, encoder.model_max_positions))
    spec = PassageSpec(**passage_spec(passage_tokens, passage_overlap, None)).check(
        encoder.max_length
    )
    instruction = resolve_instruction(encoder, data.name, PROFILE_DEFAULT)
    order = list(data.corpus)
    random.Random(seed).shuffle(order)
    queries, qrels = data.queries, data.qrels
    if documents is not None:
        order = order[:documents]
        qrels = subset_qrels(qrels, {d.doc_id for d in order})
        queries = {q: text for q, text in queries.items() if q in qrels}
        if not queries:
            raise EngineError(f"no query is judged relevant on the first {documents} documents")
    lengths = [
        len(ids)
        for ids in encoder.tokenizer(
            [f"{d.title} {d.text}".strip() for d in order], add_special_tokens=False
        )["input_ids"]
    ]
    corpus_tokens = sum(lengths)

    def say(text: str) -> None:
        if not (quiet or as_json):
            click.echo(text, err=True)

    say(f"{data.name}: {len(order)} documents, {corpus_tokens:,} tokens, {len(queries)} queries")
    say("short documents (the original corpus), first tokens ...")
    short = index_and_score(
        encoder, order, queries, qrels, instruction=instruction, passages=None,
        corpus_tokens=corpus_tokens,
    )  # fmt: skip
    say(f"  nDCG@10 {short['ndcg@10']:.4f}; passages ...")
    short_passages = index_and_score(
        encoder, order, queries, qrels, instruction=instruction, passages=spec,
        corpus_tokens=corpus_tokens,
    )  # fmt: skip
    rows = []
    for size in sizes:
        files, owner = pack_files(order, lengths, size)
        judged = file_qrels(qrels, owner)
        row: dict[str, Any] = {"file_tokens": size, "files": len(files)}
        for key, passages in (("first_tokens", None), ("passages", spec)):
            say(f"files of {size} tokens ({len(files)}), {key} ...")
            row[key] = index_and_score(
                encoder, files, queries, judged, instruction=instruction,
                passages=passages, corpus_tokens=corpus_tokens,
            )  # fmt: skip
        row["passages_share_of_short"] = round(row["passages"]["ndcg@10"] / short["ndcg@10"], 4)
        row["first_tokens_share_of_short"] = round(
            row["first_tokens"]["ndcg@10"] / short["ndcg@10"], 4
        )
        rows.append(row)
    summary = {
        "benchmark": "long",
        "created": utc_now(),
        "command": command_line(click.get_current_context()),
        "machine": machine(),
        "dataset": data.name,
        "split": data.split,
        "model": encoder.name,
        "precision": encoder.precision,
        "max_length": encoder.max_length,
        "passages": spec.to_settings(),
        "seed": seed,
        "documents": len(order),
        "corpus_tokens": corpus_tokens,
        "queries": len(queries),
        "documents_used": "all"
        if documents is None
        else f"the first {documents} after the shuffle",
        "rule": "a file is relevant to a query with the highest grade of its documents; "
        "with passages a file scores its best passage (dense, as the ndcg@10 of each mode); "
        "'rankings' scores the same index hybrid (engine search's default, best passage on "
        f"each side) and, on passages, dense with a file scored by the sum of its best "
        f"{SUM_OF_TOP} passages among the {PASSAGE_FETCH} best",
        "short_documents": {"first_tokens": short, "passages": short_passages},
        "long_documents": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    subset = f"-{documents}docs" if documents is not None else ""
    path = (
        out / f"long-{data.name}{subset}-{encoder.name.split('/')[-1]}-passages{spec.tokens}.json"
    )
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"{data.name}: {len(order)} documents ({corpus_tokens:,} tokens), {len(queries)} "
        f"queries; {encoder.name}, first {encoder.max_length} tokens vs passages of {spec.tokens}"
    )
    click.echo(
        f"{'documents':<22}{'first tokens':>14}{'passages':>10}{'s / Mtok':>18}{'B / tok':>16}"
        f"{'hybrid: first / passages':>28}{f'sum of {SUM_OF_TOP}':>10}"
    )

    def line(label: str, first: dict, split: dict) -> None:
        click.echo(
            f"{label:<22}{first['ndcg@10']:>14.4f}{split['ndcg@10']:>10.4f}"
            f"{first['seconds_per_million_corpus_tokens']:>9.0f} /{split['seconds_per_million_corpus_tokens']:>7.0f}"
            f"{first['index_bytes_per_corpus_token']:>8.1f} /{split['index_bytes_per_corpus_token']:>6.1f}"
            f"{first['rankings']['hybrid']['ndcg@10']:>19.4f} /{split['rankings']['hybrid']['ndcg@10']:>7.4f}"
            f"{split['rankings'][f'dense, sum of the best {SUM_OF_TOP} passages']['ndcg@10']:>10.4f}"
        )

    line("short (original)", short, short_passages)
    for row in rows:
        line(
            f"files of {row['file_tokens']} ({row['files']})", row["first_tokens"], row["passages"]
        )
    click.echo(f"Wrote {path}")
