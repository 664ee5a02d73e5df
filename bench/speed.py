"""`engine bench speed`: encoding throughput, and the indexing benchmark against a baseline.

Two modes:

* encoding (default): the engine's :meth:`Encoder.encode_texts` (or ``encode_ids``
  for a random-weight model) over a corpus, next to sentence-transformers'
  ``encode(batch_size=32)`` with the same model and maximum length;
* ``--index``: the full pipeline (``update_index`` into a fresh index folder, then
  one query at a time through ``indexer.search.search_queries``) next to
  sentence-transformers + a ``faiss.IndexFlatIP`` doing the same job, with the
  top-10 lists of both compared.

Reported: docs/s, tokens/s (real tokens), padding waste (padded / real tokens of
the batches each side forms), peak memory (RSS on CPU, allocated GPU memory on
CUDA) and, on a GPU, model FLOP utilisation.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import click
import numpy as np

from bench.common import command_line, encoding_suffix, file_slug, latency_ms, machine
from bench.mfu import model_flop_utilisation, non_embedding_parameters, peak_tflops_for
from bench.peak_memory import PeakMemory
from bench.random_models import MISTRAL_SHAPES, build_random_encoder
from bench.workloads import (
    Workload,
    corpus_documents,
    random_ids,
    synthetic_lengths,
    synthetic_texts,
)
from engine.errors import EngineError
from engine.options import (
    batch_tokens_option,
    device_option,
    json_option,
    model_option,
    precision_option,
    quiet_option,
    results_dir_option,
    runtime_option,
)
from engine.progress import progress_enabled

BASELINE_BATCH_SIZE = 32
WARMUP_DOCUMENTS = 4
TOP_K = 10


# ------------------------------------------------------------- measurement
def engine_padding(lengths: Sequence[int], batch_tokens: int) -> float:
    """Padded / real tokens of the engine's token-budget batches (the same batching function)."""
    from engine.encoder import token_budget_batches

    padded = sum(
        len(batch) * max(lengths[i] for i in batch)
        for batch in token_budget_batches(lengths, batch_tokens)
    )
    return padded / max(sum(lengths), 1)


def baseline_padding(texts: Sequence[str], lengths: Sequence[int], batch_size: int) -> float:
    """Padded / real tokens of sentence-transformers' batches: sorted by text length, fixed size."""
    order = np.argsort([-len(text) for text in texts], kind="stable")
    padded = 0
    for start in range(0, len(order), batch_size):
        chunk = [lengths[i] for i in order[start : start + batch_size]]
        padded += len(chunk) * max(chunk)
    return padded / max(sum(lengths), 1)


def throughput(
    documents: int, tokens: int, seconds: float, memory: PeakMemory, padding: float
) -> dict:
    return {
        "seconds": round(seconds, 3),
        "docs_per_second": round(documents / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
        "padding_waste": round(padding, 4),
        **memory.to_dict(),
    }


def measure_encoding(encoder, baseline, workload: Workload, *, rounds: int, progress: bool):
    """Time the engine's encoding (tokenise for texts + token-budget batches + forward +
    pooling) and, when ``baseline`` is given, sentence-transformers' on the same documents.

    With ``rounds`` > 1 the documents are cut into that many consecutive slices and
    the two sides take turns on each slice (engine first on even rounds, baseline first
    on odd ones), so a machine whose speed drifts (other jobs on shared cores) slows
    both sides alike; each round's ratio is kept to show the spread. Returns the engine
    figures, the baseline figures (None without one) and both sides' vectors.
    """
    items = workload.texts if workload.texts is not None else workload.ids
    lengths = workload.lengths

    def run_engine(chunk: Sequence, show: bool = False) -> np.ndarray:
        if workload.texts is not None:
            return encoder.encode_texts(chunk, progress=show)
        return encoder.encode_ids(chunk, progress=show)

    def run_baseline(chunk: Sequence, show: bool = False) -> np.ndarray:
        return baseline_encode(baseline, chunk, progress=show)

    sides = {"engine": run_engine} | ({"baseline": run_baseline} if baseline is not None else {})
    for run in sides.values():
        run(items[:WARMUP_DOCUMENTS])
    bounds = np.linspace(0, len(items), rounds + 1).round().astype(int)
    timed: dict[str, list[tuple[float, np.ndarray, PeakMemory]]] = {side: [] for side in sides}
    cpu_seconds: dict[str, list[float]] = {side: [] for side in sides}
    for round_index, (start, stop) in enumerate(itertools.pairwise(bounds)):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for side in order:
            with PeakMemory(encoder.device) as memory:
                cpu_started = _cpu_seconds()
                started = time.perf_counter()
                vectors = sides[side](items[start:stop], progress and rounds == 1)
                seconds = time.perf_counter() - started
            cpu_seconds[side].append(_cpu_seconds() - cpu_started)
            timed[side].append((seconds, vectors, memory))
    # Padded / real tokens of the batches each side formed, slice by slice.
    padded = {"engine": 0.0, "baseline": 0.0}
    for start, stop in itertools.pairwise(bounds):
        tokens = sum(lengths[start:stop])
        padded["engine"] += tokens * engine_padding(lengths[start:stop], encoder.batch_tokens)
        if baseline is not None:
            texts = workload.texts[start:stop]
            padded["baseline"] += tokens * baseline_padding(
                texts, lengths[start:stop], BASELINE_BATCH_SIZE
            )
    padding = {side: value / max(sum(lengths), 1) for side, value in padded.items()}
    results = {}
    for side, runs in timed.items():
        memories = [memory for _, _, memory in runs]
        figures = throughput(
            len(lengths),
            sum(lengths),
            sum(seconds for seconds, _, _ in runs),
            memories[0],
            padding[side],
        )
        figures.update(merged_memory(memories))
        results[side] = figures
    results["engine"]["batch_tokens"] = encoder.batch_tokens
    engine_vectors = np.concatenate([vectors for _, vectors, _ in timed["engine"]])
    if baseline is None:
        return results["engine"], None, engine_vectors, None
    results["baseline"]["batch_size"] = BASELINE_BATCH_SIZE
    for side in results:
        results[side]["cpu_seconds"] = round(sum(cpu_seconds[side]), 3)
    if rounds > 1:
        results["engine"]["rounds"] = [
            {
                "documents": int(stop - start),
                "engine_seconds": round(engine_run[0], 3),
                "baseline_seconds": round(baseline_run[0], 3),
                "speedup": round(baseline_run[0] / engine_run[0], 3),
                "engine_cpu_seconds": round(engine_cpu, 3),
                "baseline_cpu_seconds": round(baseline_cpu, 3),
            }
            for (start, stop), engine_run, baseline_run, engine_cpu, baseline_cpu in zip(
                itertools.pairwise(bounds),
                timed["engine"],
                timed["baseline"],
                cpu_seconds["engine"],
                cpu_seconds["baseline"],
                strict=True,
            )
        ]
        results["engine"]["median_round_speedup"] = round(
            float(np.median([r["speedup"] for r in results["engine"]["rounds"]])), 3
        )
    baseline_vectors = np.concatenate([vectors for _, vectors, _ in timed["baseline"]])
    return results["engine"], results["baseline"], engine_vectors, baseline_vectors


def _cpu_seconds() -> float:
    """CPU time of this process (user + system, all threads): unlike the wall clock, barely
    moved by other jobs on the same cores (spinning OpenMP threads still count)."""
    times = os.times()
    return times.user + times.system


def merged_memory(memories: Sequence[PeakMemory]) -> dict:
    """The highest peak, and the largest increase within one timed run, over several runs."""
    figures = [memory.to_dict() for memory in memories]
    peaks = [f["peak_memory_mb"] for f in figures if f["peak_memory_mb"] is not None]
    increases = [
        f["peak_memory_increase_mb"] for f in figures if f["peak_memory_increase_mb"] is not None
    ]
    return {
        "peak_memory_mb": max(peaks) if peaks else None,
        "peak_memory_increase_mb": max(increases) if increases else None,
    }


def load_baseline(model: str | None, max_length: int, device) -> tuple[object | None, str | None]:
    """sentence-transformers with the same model and length; (None, reason) when it cannot run."""
    from engine.encoder import locate_model

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None, "sentence-transformers is not installed (pip install -e '.[dev]')"
    source = locate_model(model)
    if source.adapter is not None:
        return None, "the model is a PEFT adapter; sentence-transformers has no baseline for it"
    try:
        baseline = SentenceTransformer(source.location, device=str(device))
    except Exception as exc:  # noqa: BLE001 - any load failure just means no baseline
        return None, f"sentence-transformers cannot load {source.name}: {exc}"
    baseline.max_seq_length = max_length
    return baseline, None


def baseline_encode(baseline, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
    return baseline.encode(
        list(texts),
        batch_size=BASELINE_BATCH_SIZE,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )


def measure_baseline(
    baseline,
    texts: Sequence[str],
    lengths: Sequence[int],
    device,
    *,
    progress: bool,
    build_index: bool = False,
) -> dict:
    """Time sentence-transformers encoding (and, with ``build_index``, a faiss.IndexFlatIP add)."""
    import faiss

    baseline_encode(baseline, texts[:WARMUP_DOCUMENTS])
    index = None
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        vectors = baseline_encode(baseline, texts, progress=progress)
        if build_index:
            index = faiss.IndexFlatIP(vectors.shape[1])
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        seconds = time.perf_counter() - started
    result = throughput(
        len(texts),
        sum(lengths),
        seconds,
        memory,
        baseline_padding(texts, lengths, BASELINE_BATCH_SIZE),
    )
    result["batch_size"] = BASELINE_BATCH_SIZE
    return result | {"_vectors": vectors, "_index": index}


def vector_agreement(engine_vectors: np.ndarray, baseline_vectors: np.ndarray) -> dict:
    """How close the two sides' embeddings are (same model: they should match to float noise)."""
    difference = np.abs(engine_vectors - baseline_vectors).max()
    cosine = (engine_vectors * baseline_vectors).sum(axis=1)
    return {"max_abs_difference": float(difference), "min_cosine": float(cosine.min())}


# ------------------------------------------------------------- index mode
def compare_rankings(
    engine: dict[str, list[tuple[str, float]]], baseline: dict[str, list[tuple[str, float]]]
) -> dict:
    """Share of queries with identical top-k id lists (and sets), largest score difference."""
    same_list = same_set = 0
    max_difference = 0.0
    for query_id, engine_hits in engine.items():
        baseline_hits = baseline[query_id]
        engine_ids = [doc for doc, _ in engine_hits]
        baseline_ids = [doc for doc, _ in baseline_hits]
        same_list += engine_ids == baseline_ids
        same_set += set(engine_ids) == set(baseline_ids)
        for (_, a), (_, b) in zip(engine_hits, baseline_hits, strict=False):
            max_difference = max(max_difference, abs(a - b))
    n = max(len(engine), 1)
    return {
        "queries": len(engine),
        "k": TOP_K,
        "identical_top_k_share": round(same_list / n, 4),
        "same_top_k_set_share": round(same_set / n, 4),
        "max_abs_score_difference": max_difference,
    }


def run_index_benchmark(
    encoder,
    dataset,
    *,
    instruction: str | None,
    baseline,
    progress: bool,
) -> dict:
    """Index with the engine and with sentence-transformers + FAISS, then query both."""
    from indexer.indexing import update_index
    from indexer.search import search_queries
    from indexer.store import Store

    documents = dataset.corpus
    texts = [encoder.format_document(doc.title, doc.text) for doc in documents]
    lengths = [len(x) for x in encoder.tokenize(texts)]
    queries = list(dataset.queries.items())
    query_texts = [encoder.format_query(text, instruction) for _, text in queries]
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="engine-bench-index-") as folder:
        index_dir = Path(folder) / "index"
        with PeakMemory(encoder.device) as memory:
            report = update_index(index_dir, encoder, documents, rebuild=True, progress=progress)
        engine = throughput(
            report.encoded,
            report.encoded_tokens,
            report.seconds,
            memory,
            engine_padding(lengths, encoder.batch_tokens),
        )
        engine["batch_tokens"] = encoder.batch_tokens
        store = Store.open(index_dir)
        # Dense, as the baseline ranks: the comparison is of embeddings, not of fusion.
        search_queries(
            store, [queries[0][1]], k=TOP_K, instruction=instruction, encoder=encoder, mode="dense"
        )
        latencies, engine_hits = [], {}
        for query_id, text in queries:
            started = time.perf_counter()
            hits = search_queries(
                store, [text], k=TOP_K, instruction=instruction, encoder=encoder, mode="dense"
            )[0]
            latencies.append(time.perf_counter() - started)
            engine_hits[query_id] = [(hit.doc_id, hit.score) for hit in hits]
        store.close()
        engine["query_latency"] = {"queries": len(latencies), **latency_ms(latencies)}
        engine["ndcg@10"] = ndcg_at_10(dataset.qrels, engine_hits)
        result["engine"] = engine
    if baseline is None:
        return result
    result["baseline"] = baseline_index_run(
        baseline, texts, lengths, documents, queries, query_texts, encoder.device, progress
    )
    baseline_hits = result["baseline"].pop("_hits")
    result["baseline"]["ndcg@10"] = ndcg_at_10(dataset.qrels, baseline_hits)
    result["retrieval"] = compare_rankings(engine_hits, baseline_hits)
    return result


def ndcg_at_10(qrels, hits: dict[str, list[tuple[str, float]]]) -> float:
    """nDCG@10 of top-10 lists (all that nDCG@10 reads), as `engine bench beir` scores it."""
    from bench.metrics import evaluate_run

    run = {query_id: dict(ranked) for query_id, ranked in hits.items()}
    return evaluate_run(qrels, run)["ndcg@10"]


def baseline_index_run(
    baseline, texts, lengths, documents, queries, query_texts, device, progress
) -> dict:
    """sentence-transformers encode + faiss.IndexFlatIP add, then encode + search per query."""

    result = measure_baseline(baseline, texts, lengths, device, progress=progress, build_index=True)
    result.pop("_vectors")
    index = result.pop("_index")
    doc_ids = [doc.doc_id for doc in documents]
    baseline_encode(baseline, query_texts[:1])
    latencies, hits = [], {}
    for (query_id, _), text in zip(queries, query_texts, strict=True):
        started = time.perf_counter()
        vector = baseline_encode(baseline, [text])
        scores, ids = index.search(np.ascontiguousarray(vector, dtype=np.float32), TOP_K)
        latencies.append(time.perf_counter() - started)
        hits[query_id] = [
            (doc_ids[i], float(s)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0
        ]
    result["query_latency"] = {"queries": len(latencies), **latency_ms(latencies)}
    result["_hits"] = hits
    return result


# --------------------------------------------------------------------- CLI
def _workload(encoder, data_dir, synthetic, limit, random_model, seed) -> Workload:
    if random_model:
        if data_dir is not None:
            from engine.encoder import Encoder

            documents = corpus_documents(data_dir, limit)
            measuring = Encoder.load(device="cpu")
            texts = [measuring.format_document(d.title, d.text) for d in documents]
            lengths = [len(x) for x in measuring.tokenize(texts, max_length=encoder.max_length)]
            source, lengths_from = data_dir.name, f"{measuring.name} tokenizer"
        else:
            lengths = synthetic_lengths(synthetic, encoder.max_length, seed)
            source, lengths_from = f"synthetic-{synthetic}", "lognormal token lengths"
        return Workload(source, random_ids(encoder, lengths, seed), None, lengths_from)
    if data_dir is not None:
        documents = corpus_documents(data_dir, limit)
        texts = [encoder.format_document(d.title, d.text) for d in documents]
        source = data_dir.name
    else:
        texts = synthetic_texts(encoder, synthetic, seed)
        source = f"synthetic-{synthetic}"
    return Workload(source, encoder.tokenize(texts), texts, f"{encoder.name} tokenizer")


def _row(label: str, figures: dict) -> str:
    increase = figures.get("peak_memory_increase_mb")
    return (
        f"{label:<34} {figures['docs_per_second']:>8.1f} {figures['tokens_per_second']:>10,.0f} "
        f"{figures['padding_waste']:>8.3f} {figures['peak_memory_mb'] or 0:>9,.0f} "
        f"{'' if increase is None else f'{increase:+,.0f}':>8}"
    )


def format_report(report: dict) -> str:
    corpus = report["corpus"]
    lines = [
        f"{'Indexing' if report['mode'] == 'index' else 'Encoding'} speed: {report['model']} on "
        f"{report['device']} ({report['threads']} threads), {corpus['source']}: "
        f"{corpus['documents']:,} documents, {corpus['tokens']:,} tokens "
        f"(mean {corpus['mean_tokens']:.0f}), max length {report['max_length']}",
        f"{'':<34} {'docs/s':>8} {'tokens/s':>10} {'padding':>8} {'peak MB':>9} {'(+MB)':>8}",
    ]
    engine = report["engine"]
    how = f"{report.get('precision', 'fp32')}, {report.get('runtime', 'torch')}, "
    lines.append(_row(f"engine ({how}{engine['batch_tokens']} tok/batch)", engine))
    baseline = report.get("baseline")
    if baseline and "skipped" not in baseline:
        lines.append(_row(f"sentence-transformers (batch {baseline['batch_size']})", baseline))
        lines.append(f"engine / baseline: {report['speedup']:.2f}x docs/s")
        rounds = engine.get("rounds")
        if rounds:
            ratios = [r["speedup"] for r in rounds]
            lines.append(
                f"per round ({len(rounds)}, sides taking turns): median "
                f"{engine['median_round_speedup']:.2f}x, {min(ratios):.2f}x to {max(ratios):.2f}x"
            )
        if engine.get("cpu_seconds"):
            lines.append(
                f"CPU seconds: engine {engine['cpu_seconds']:.1f}, baseline "
                f"{baseline['cpu_seconds']:.1f} ({baseline['cpu_seconds'] / engine['cpu_seconds']:.2f}x)"
            )
    elif baseline:
        lines.append(f"baseline skipped: {baseline['skipped']}")
    if engine.get("mfu") is not None:
        lines.append(
            f"model FLOP utilisation: {engine['mfu']:.1%} of {report['peak_tflops']:g} TFLOP/s"
        )
    if report["mode"] == "index":
        for label, side in (("engine", engine), ("baseline", baseline)):
            if side and "query_latency" in side:
                latency = side["query_latency"]
                lines.append(
                    f"query latency, {label}: p50 {latency['p50_ms']:.1f} ms, "
                    f"p95 {latency['p95_ms']:.1f} ms over {latency['queries']} queries; "
                    f"nDCG@10 {side['ndcg@10']:.4f}"
                )
        retrieval = report.get("retrieval")
        if retrieval:
            lines.append(
                f"top-{retrieval['k']} identical for {retrieval['identical_top_k_share']:.1%} of "
                f"queries (same set {retrieval['same_top_k_set_share']:.1%}), max |score "
                f"difference| {retrieval['max_abs_score_difference']:.2e}"
            )
    agreement = report.get("vector_agreement")
    if agreement:
        lines.append(
            f"vectors: max |difference| {agreement['max_abs_difference']:.2e}, "
            f"min cosine {agreement['min_cosine']:.6f}"
        )
    return "\n".join(lines)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="A BEIR dataset folder (its corpus.jsonl) or any folder `engine index` reads.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=1),
    help="N synthetic documents with lognormal token lengths like BEIR abstracts.",
)
@model_option()
@click.option(
    "--random-model",
    type=click.Choice(sorted(MISTRAL_SHAPES)),
    help="A random-weight Mistral of this shape with the e5-mistral profile, fed random token "
    "ids (no download; bf16 on a GPU). No baseline.",
)
@click.option("--max-length", type=int, help="Tokens per document (default: 512 or the model's).")
@batch_tokens_option()
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N documents.")
@device_option()
@precision_option()
@runtime_option()
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Run sentence-transformers with the same model alongside.",
)
@click.option(
    "--index",
    "index_mode",
    is_flag=True,
    help="Benchmark the whole pipeline on a BEIR folder: index into a fresh folder, then query "
    "latency (one query at a time) and top-10 agreement with the baseline.",
)
@click.option("--split", help="Query split for --index (default: test).")
@click.option(
    "--instruct/--no-instruct",
    "instruct",
    default=None,
    help="Queries with the dataset's instruction (default: if the model is instruction-tuned).",
)
@click.option(
    "--peak-tflops",
    type=float,
    help="The GPU's dense bf16 peak for MFU (default: known for H100/H200/A100/L4/L40S/A10).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Cut the documents into N slices and let the engine and the baseline take turns on "
    "each, so a machine whose speed drifts slows both alike; reports the median of the "
    "per-slice ratios too (encoding mode).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for synthetic data.")
@results_dir_option("JSON report")
@json_option()
@quiet_option()
def speed(
    data_dir: Path | None,
    synthetic: int | None,
    model: str | None,
    random_model: str | None,
    max_length: int | None,
    batch_tokens: int | None,
    limit: int | None,
    device: str | None,
    precision: str | None,
    runtime: str | None,
    baseline: bool,
    index_mode: bool,
    split: str | None,
    instruct: bool | None,
    peak_tflops: float | None,
    rounds: int,
    seed: int,
    out: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Encoding throughput of the engine next to sentence-transformers with the same model.

    Reports docs/s, tokens/s, padding waste (padded / real tokens), peak memory
    and, on a GPU, model FLOP utilisation. With --index it runs the whole
    pipeline (index, then queries one at a time) against sentence-transformers +
    faiss-cpu and checks that both return the same top-10 documents.

    \b
    Examples:
      engine bench speed --data-dir ../shared/data/beir/scifact --max-length 256 --limit 1000
      engine bench speed --data-dir ../shared/data/beir/scifact --max-length 256 --limit 1000 \\
        --precision fp32 --rounds 4
      engine bench speed --data-dir ../shared/data/beir/scifact --max-length 256 --limit 1000 \\
        --runtime openvino --rounds 4
      engine bench speed --data-dir ../shared/data/beir/scifact --max-length 256 --index
      engine bench speed --synthetic 2000 --batch-tokens 4096 --no-baseline
      engine bench speed --random-model mistral-7b --synthetic 2000 --device cuda
    """
    import torch

    from engine.encoder import Encoder, document_tokens

    if (data_dir is None) == (synthetic is None):
        raise EngineError("give exactly one of --data-dir and --synthetic")
    if model and random_model:
        raise EngineError("--model and --random-model exclude each other")
    if index_mode and (data_dir is None or random_model):
        raise EngineError("--index needs --data-dir (a BEIR folder) and a real model")
    if batch_tokens is not None and batch_tokens < 1:
        raise EngineError("--batch-tokens must be positive")
    if index_mode and rounds > 1:
        raise EngineError("--rounds is for encoding mode, not --index")
    progress = progress_enabled(not (quiet or as_json))
    dataset = None
    if index_mode:
        from bench.datasets import load_beir

        dataset = load_beir(data_dir, split)
        if limit:
            dataset.corpus = dataset.corpus[:limit]
    if random_model:
        encoder = build_random_encoder(
            random_model, device, batch_tokens=batch_tokens, precision=precision, runtime=runtime
        )
    else:
        encoder = Encoder.load(
            model, device=device, batch_tokens=batch_tokens, precision=precision, runtime=runtime
        )
    encoder.set_max_length(document_tokens(encoder, max_length))

    sentence_transformer, skipped = None, None
    if random_model:
        skipped = "a random-weight model has no sentence-transformers counterpart"
    elif not baseline:
        skipped = "--no-baseline"
    else:
        sentence_transformer, skipped = load_baseline(model, encoder.max_length, encoder.device)

    report: dict = {
        "benchmark": "speed",
        "command": command_line(click.get_current_context()),
        "machine": machine(),
        "mode": "index" if index_mode else "encode",
        "model": encoder.name,
        "device": str(encoder.device),
        "threads": torch.get_num_threads(),
        "max_length": encoder.max_length,
        "dtype": str(next(encoder.model.parameters()).dtype).replace("torch.", ""),
        "precision": encoder.precision,
        "runtime": encoder.runtime,
    }
    if index_mode:
        from bench.datasets import instruction_for, known_name

        use_instruction = encoder.profile.instruction_tuned if instruct is None else instruct
        instruction = None
        if use_instruction:
            if known_name(data_dir) is None:
                raise EngineError(f"no known instruction for {data_dir.name}; use --no-instruct")
            instruction = instruction_for(known_name(data_dir))
        texts = [encoder.format_document(d.title, d.text) for d in dataset.corpus]
        workload = Workload(
            dataset.name, encoder.tokenize(texts), texts, f"{encoder.name} tokenizer"
        )
        report["corpus"] = workload.describe() | {"split": dataset.split}
        report["instruction"] = instruction
        results = run_index_benchmark(
            encoder,
            dataset,
            instruction=instruction,
            baseline=sentence_transformer,
            progress=progress,
        )
        report.update(results)
    else:
        workload = _workload(encoder, data_dir, synthetic, limit, random_model, seed)
        report["corpus"] = workload.describe()
        engine, measured, engine_vectors, baseline_vectors = measure_encoding(
            encoder, sentence_transformer, workload, rounds=rounds, progress=progress
        )
        report["engine"] = engine
        if measured is not None:
            report["baseline"] = measured
            report["vector_agreement"] = vector_agreement(engine_vectors, baseline_vectors)
    if sentence_transformer is None:
        report["baseline"] = {"skipped": skipped}
    else:
        report["speedup"] = round(
            report["engine"]["docs_per_second"] / report["baseline"]["docs_per_second"], 3
        )
    if encoder.device.type == "cuda":
        known_peak, device_name = peak_tflops_for(encoder.device)
        peak = peak_tflops or known_peak
        parameters = non_embedding_parameters(encoder.model)
        report.update(
            {"gpu": device_name, "peak_tflops": peak, "non_embedding_parameters": parameters}
        )
        for side in ("engine", "baseline"):
            figures = report.get(side, {})
            if "tokens_per_second" in figures:
                figures["mfu"] = model_flop_utilisation(
                    parameters, figures["tokens_per_second"], peak
                )
    out.mkdir(parents=True, exist_ok=True)
    name = "-".join(
        [
            "index" if index_mode else "speed",
            file_slug(encoder.name),
            file_slug(report["corpus"]["source"]) + (f"{limit}" if limit and data_dir else ""),
            str(encoder.max_length),
            f"bt{encoder.batch_tokens}",
            encoder.device.type,
        ]
    ) + encoding_suffix(encoder.precision, encoder.runtime)
    path = out / f"{name}.json"
    report["json"] = str(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(format_report(report))
    click.echo(f"Wrote {path}")
