"""`engine bench speed`: encoding throughput, and the indexing benchmark against a baseline.

Two modes:

* encoding (default): the engine's :meth:`Encoder.encode_texts` (or ``encode_ids``
  for a random-weight model) over a corpus, next to sentence-transformers'
  ``encode(batch_size=32)`` with the same model and maximum length;
* ``--index``: the full pipeline (``update_index`` into a fresh index folder, then
  one query at a time through ``indexer.search.search``) next to
  sentence-transformers + a ``faiss.IndexFlatIP`` doing the same job, with the
  top-10 lists of both compared.

Reported: docs/s, tokens/s (real tokens), padding waste (padded / real tokens of
the batches each side forms), peak memory (RSS on CPU, allocated GPU memory on
CUDA) and, on a GPU, model FLOP utilisation.
"""

from __future__ import annotations

import itertools
import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from bench.common import command_line, file_slug, machine
from engine.errors import EngineError
from engine.options import (
    batch_tokens_option,
    device_option,
    json_option,
    model_option,
    precision_option,
    quiet_option,
    results_dir_option,
)
from engine.progress import progress_enabled

BASELINE_BATCH_SIZE = 32
DEFAULT_SYNTHETIC_SEED = 0
# Lognormal token lengths fitted to SciFact's "title text" documents in the
# all-MiniLM-L6-v2 tokenizer (median 316 tokens, 5-95% 156-568).
SYNTHETIC_LOG_MEAN = 5.74
SYNTHETIC_LOG_STD = 0.40
SYNTHETIC_MIN_TOKENS = 8
WARMUP_DOCUMENTS = 4
TOP_K = 10

# Random-weight Mistral shapes: e5-mistral's (Mistral-7B) and small ones for tests.
RANDOM_SHAPES: dict[str, dict[str, int]] = {
    "mistral-7b": {
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 1000,
        "max_position_embeddings": 4096,
    },
}

# Dense bf16 tensor-core peak (TFLOP/s) by device-name fragment; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


# ------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory during a block: process RSS on CPU, allocated memory on CUDA.

    On Linux the RSS high-water mark is reset at entry (``/proc/self/clear_refs``),
    so each phase reports its own peak; elsewhere the process lifetime peak is used.
    """

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.start_mb: float | None = None
        self.kind = "cuda allocated" if self.device.type == "cuda" else "rss"

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "rss (process lifetime peak)"
        self.start_mb = _proc_status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        peak = _proc_status_mb("VmHWM")
        if peak is None:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.peak_mb = peak

    def to_dict(self) -> dict:
        increase = None
        if self.peak_mb is not None and self.start_mb is not None:
            increase = round(self.peak_mb - self.start_mb, 1)
        return {
            "peak_memory_mb": None if self.peak_mb is None else round(self.peak_mb, 1),
            "peak_memory_increase_mb": increase,
            "memory_kind": self.kind,
        }


def _proc_status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------- workload
@dataclass
class Workload:
    """What gets encoded: formatted texts (None for random token ids) and the engine's ids."""

    source: str
    ids: list[list[int]]
    texts: list[str] | None = None
    lengths_from: str = ""

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]

    def describe(self) -> dict:
        lengths = np.asarray(self.lengths)
        return {
            "source": self.source,
            "documents": len(lengths),
            "tokens": int(lengths.sum()),
            "mean_tokens": round(float(lengths.mean()), 1),
            "median_tokens": float(np.median(lengths)),
            "max_tokens": int(lengths.max()),
            "lengths_from": self.lengths_from,
        }


def synthetic_lengths(count: int, max_length: int, seed: int = DEFAULT_SYNTHETIC_SEED) -> list[int]:
    """Lognormal token lengths like BEIR abstracts, clipped to ``[8, max_length]``."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(SYNTHETIC_LOG_MEAN, SYNTHETIC_LOG_STD, size=count)
    return [int(n) for n in np.clip(np.round(raw), SYNTHETIC_MIN_TOKENS, max_length)]


def single_token_words(tokenizer, *, seed: int = DEFAULT_SYNTHETIC_SEED, limit: int = 2000):
    """Whole words the tokenizer reads as one token each, so word count ~ token count."""
    candidates = sorted(
        {
            token.lstrip("▁Ġ")
            for token in tokenizer.get_vocab()
            if not token.startswith("##")
            and token.lstrip("▁Ġ").isascii()
            and token.lstrip("▁Ġ").isalpha()
            and len(token.lstrip("▁Ġ")) >= 3
        }
    )
    random.Random(seed).shuffle(candidates)
    words = []
    for word in candidates:
        if len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1:
            words.append(word)
            if len(words) >= limit:
                break
    if not words:
        raise EngineError("cannot make synthetic text: no single-token words in the vocabulary")
    return words


def synthetic_texts(encoder, count: int, seed: int = DEFAULT_SYNTHETIC_SEED) -> list[str]:
    """Random-word documents whose token lengths follow :func:`synthetic_lengths`."""
    words = single_token_words(encoder.tokenizer, seed=seed)
    special = len(encoder.tokenize(["word"])[0]) - 1
    rng = random.Random(seed)
    return [
        " ".join(rng.choices(words, k=max(length - special, 1)))
        for length in synthetic_lengths(count, encoder.max_length, seed)
    ]


def random_ids(encoder, lengths: Sequence[int], seed: int = DEFAULT_SYNTHETIC_SEED):
    """Random token ids of the given lengths, with the BOS/EOS the profile requires."""
    rng = np.random.default_rng(seed)
    vocab = int(encoder.model.config.vocab_size)
    head = [encoder.bos_id] if encoder.profile.require_bos else []
    tail = [encoder.eos_id] if encoder.profile.require_eos else []
    low = 3 if vocab > 3 else 0
    sequences = []
    for length in lengths:
        body = max(min(length, encoder.max_length) - len(head) - len(tail), 1)
        sequences.append(head + rng.integers(low, vocab, size=body).tolist() + tail)
    return sequences


def corpus_documents(data_dir: Path, limit: int | None):
    """Documents of a BEIR folder (its corpus.jsonl) or any folder ``engine index`` reads."""
    from bench.datasets import CORPUS_FILE, is_beir_folder
    from indexer.documents import read_corpus

    if not data_dir.exists():
        raise EngineError(f"--data-dir not found: {data_dir}")
    path = data_dir / CORPUS_FILE if is_beir_folder(data_dir) else data_dir
    documents = list(itertools.islice(read_corpus(path), limit))  # limit None: all
    if not documents:
        raise EngineError(f"no readable documents in {data_dir}")
    return documents


# ------------------------------------------------------------ random model
def build_random_encoder(
    shape: str,
    device: str | None,
    *,
    batch_tokens: int | None = None,
    precision: str | None = None,
):
    """A random-weight Mistral of ``shape`` with the e5-mistral profile (bf16 on CUDA).

    There is no tokenizer offline for Mistral; a three-token stand-in supplies the
    BOS/EOS/pad ids and callers feed random ids through :meth:`Encoder.encode_ids`.
    """
    import torch
    from tokenizers import Tokenizer, models
    from transformers import MistralConfig, MistralModel, PreTrainedTokenizerFast

    from engine.encoder import Encoder
    from engine.profiles import E5_MISTRAL

    if shape not in RANDOM_SHAPES:
        raise EngineError(f"--random-model must be one of {', '.join(RANDOM_SHAPES)}, not {shape}")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    config = MistralConfig(**RANDOM_SHAPES[shape], bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    with target:
        model = MistralModel._from_config(config, dtype=dtype)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=config.max_position_embeddings,
    )
    return Encoder.from_model(
        model,
        tokenizer,
        E5_MISTRAL,
        name=f"random-{shape}",
        batch_tokens=batch_tokens,
        precision=precision,
    )


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


def non_embedding_parameters(model) -> int:
    total = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings()
    return total - (embeddings.weight.numel() if embeddings is not None else 0)


def peak_tflops_for(device) -> tuple[float | None, str | None]:
    """The dense bf16 peak of a known GPU, by name; (None, name) when unknown."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    name = torch.cuda.get_device_name(device)
    for fragment, tflops in PEAK_BF16_TFLOPS:
        if fragment.lower() in name.lower():
            return tflops, name
    return None, name


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


def model_flop_utilisation(parameters: int, tokens_per_second: float, peak_tflops: float | None):
    """2 x non-embedding parameters x real tokens/s over the peak (attention FLOPs left out)."""
    if not peak_tflops:
        return None
    return round(2 * parameters * tokens_per_second / (peak_tflops * 1e12), 4)


def measure_engine(encoder, workload: Workload, *, progress: bool) -> dict:
    """The engine's encoding: tokenise (for texts) + token-budget batches + forward + pooling."""

    def run(items: Sequence, show: bool = False) -> np.ndarray:
        if workload.texts is not None:
            return encoder.encode_texts(items, progress=show)
        return encoder.encode_ids(items, progress=show)

    items = workload.texts if workload.texts is not None else workload.ids
    run(items[:WARMUP_DOCUMENTS])
    with PeakMemory(encoder.device) as memory:
        started = time.perf_counter()
        vectors = run(items, progress)
        seconds = time.perf_counter() - started
    lengths = workload.lengths
    result = throughput(
        len(lengths),
        sum(lengths),
        seconds,
        memory,
        engine_padding(lengths, encoder.batch_tokens),
    )
    result["batch_tokens"] = encoder.batch_tokens
    return result | {"_vectors": vectors}


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
def latency_summary(latencies: Sequence[float]) -> dict:
    values = np.asarray(latencies) * 1000
    return {
        "queries": len(values),
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "mean_ms": round(float(values.mean()), 2),
    }


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
        search_queries(store, [queries[0][1]], k=TOP_K, instruction=instruction, encoder=encoder)
        latencies, engine_hits = [], {}
        for query_id, text in queries:
            started = time.perf_counter()
            hits = search_queries(store, [text], k=TOP_K, instruction=instruction, encoder=encoder)[
                0
            ]
            latencies.append(time.perf_counter() - started)
            engine_hits[query_id] = [(hit.doc_id, hit.score) for hit in hits]
        store.close()
        engine["query_latency"] = latency_summary(latencies)
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
    result["query_latency"] = latency_summary(latencies)
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
    lines.append(_row(f"engine ({engine['batch_tokens']} tokens/batch)", engine))
    baseline = report.get("baseline")
    if baseline and "skipped" not in baseline:
        lines.append(_row(f"sentence-transformers (batch {baseline['batch_size']})", baseline))
        lines.append(f"engine / baseline: {report['speedup']:.2f}x docs/s")
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
    type=click.Choice(sorted(RANDOM_SHAPES)),
    help="A random-weight Mistral of this shape with the e5-mistral profile, fed random token "
    "ids (no download; bf16 on a GPU). No baseline.",
)
@click.option("--max-length", type=int, help="Tokens per document (default: 512 or the model's).")
@batch_tokens_option()
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N documents.")
@device_option()
@precision_option()
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
    baseline: bool,
    index_mode: bool,
    split: str | None,
    instruct: bool | None,
    peak_tflops: float | None,
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
    progress = progress_enabled(not (quiet or as_json))
    dataset = None
    if index_mode:
        from bench.datasets import load_beir

        dataset = load_beir(data_dir, split)
        if limit:
            dataset.corpus = dataset.corpus[:limit]
    if random_model:
        encoder = build_random_encoder(
            random_model, device, batch_tokens=batch_tokens, precision=precision
        )
    else:
        encoder = Encoder.load(model, device=device, batch_tokens=batch_tokens, precision=precision)
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
        engine = measure_engine(encoder, workload, progress=progress)
        engine_vectors = engine.pop("_vectors")
        report["engine"] = engine
        if sentence_transformer is not None:
            measured = measure_baseline(
                sentence_transformer,
                workload.texts,
                workload.lengths,
                encoder.device,
                progress=progress,
            )
            measured.pop("_index")
            report["baseline"] = measured
            report["vector_agreement"] = vector_agreement(engine_vectors, measured.pop("_vectors"))
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
        + ([] if encoder.precision == "fp32" else [encoder.precision])
    )
    path = out / f"{name}.json"
    report["json"] = str(path)
    path.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(format_report(report))
    click.echo(f"Wrote {path}")
