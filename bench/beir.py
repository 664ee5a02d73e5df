"""`engine bench beir`: BEIR retrieval with the paper's evaluation protocol.

Protocol (E5-mistral, section 4 / appendix): queries get the dataset's task
instruction through the model profile's template, documents are ``title text``
with no instruction, cut to their first 512 tokens; the ``test`` split (MS MARCO:
``dev``); the top 1000 documents per query, scored with pytrec_eval as BEIR does.

The corpus goes through the engine's own indexer into a cached index (one per
dataset, model and length), so a second run encodes nothing, and queries are
searched through the Store, the same path ``engine search`` takes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bench.common import command_line, encoding_suffix
from bench.datasets import (
    BeirDataset,
    UnknownDataset,
    expand_group,
    ignores_identical_ids,
    instruction_for,
    is_beir_folder,
    known_name,
    load_beir,
    locate_dataset,
)
from bench.metrics import DEFAULT_TOP_K, METRICS, average, evaluate_run
from engine import __version__
from engine.errors import EngineError
from engine.options import (
    batch_tokens_option,
    cache_dir_option,
    device_option,
    index_type_option,
    json_option,
    model_option,
    passage_options,
    precision_option,
    quiet_option,
    results_dir_option,
    runtime_option,
    search_knob_options,
    search_mode_options,
)
from engine.progress import progress_enabled
from engine.runtime import default_cache_dir
from indexer.fusion import METHODS, MODES, Fusion
from indexer.passages import PassageSpec, passage_spec

if TYPE_CHECKING:
    import numpy as np

    from engine.encoder import Encoder
    from indexer.distributed import IndexingGroup
    from indexer.store import Store
    from indexer.vector_index import IndexSpec

DEFAULT_MAX_LENGTH = 512
# The weighted fusions `--sweep` scores (alpha: the dense side's weight).
SWEEP_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class _Choice:
    """A named sentinel for how the query instruction is chosen."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The model profile decides: the dataset's paper instruction if instruction-tuned, else none.
PROFILE_DEFAULT: Any = _Choice("PROFILE_DEFAULT")
# The dataset's paper instruction, whatever the model.
PAPER_INSTRUCTION: Any = _Choice("PAPER_INSTRUCTION")


def index_dir_for(
    cache_dir: Path, name: str, encoder: Encoder, passages: PassageSpec | None = None
) -> Path:
    """``<cache>/beir/<dataset>-<fingerprint[:12]>-<max_length>[-<precision>][-<runtime>][-p<T>o<O>]``.

    One index per model, length, precision and runtime (torch fp32 keeps the suffix-free
    name) and passage setting, so a bf16 evaluation never scores vectors encoded in fp32
    or the other way round, and passages never mix with whole documents.
    """
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
    suffix = encoding_suffix(encoder.precision, encoder.runtime)
    if passages is not None:
        suffix += f"-p{passages.tokens}o{passages.overlap}"
    return cache_dir / "beir" / f"{slug}-{encoder.fingerprint[:12]}-{encoder.max_length}{suffix}"


def resolve_instruction(encoder: Encoder, name: str, instruction: Any) -> str | None:
    """The query instruction actually used on dataset ``name``."""
    if instruction is PROFILE_DEFAULT and not encoder.profile.instruction_tuned:
        return None
    if instruction is PROFILE_DEFAULT or instruction is PAPER_INSTRUCTION:
        try:
            return instruction_for(name)
        except UnknownDataset:
            raise EngineError(
                f"no task instruction is known for dataset {name!r}; "
                "pass --instruction TEXT or --no-instruct"
            ) from None
    return instruction or None


def index_in_memory(store: Store, index_type: str) -> tuple[IndexSpec, Any]:
    """The store's vectors in another FAISS index type, built in memory (on the GPUs when a
    faiss GPU build has some); nothing is written, so one cached index serves every type."""
    from indexer import vector_index

    spec = vector_index.resolve(
        vector_index.validate_type(index_type), store.vector_count(), int(store.settings["dim"])
    )
    index = store.snapshots.build(spec)
    return spec, vector_index.to_gpus(index, spec) or index


class OtherIndexType:
    """A store searched through another FAISS index type built in memory from its vectors
    (:func:`index_in_memory`); its lexical side as it is. Nothing is written."""

    def __init__(self, store: Store, index_type: str) -> None:
        self.store = store
        self.spec, self.index = index_in_memory(store, index_type)

    def search(self, vectors: np.ndarray, k: int, knobs: Any = None) -> tuple[Any, Any]:
        from indexer import vector_index
        from indexer.vector_index import SearchKnobs

        return vector_index.top_k(
            self.index, self.spec, vectors, k, self.store.vectors, knobs=knobs or SearchKnobs()
        )

    def lexical_search(self, queries: list[str], k: int) -> tuple[Any, Any]:
        return self.store.lexical_search(queries, k)


def ranking_label(mode: str, fusion: Fusion | None = None) -> str:
    """``dense``, ``lexical``, ``rrf`` or ``weighted-0.3``: how a run was ranked."""
    if mode != "hybrid":
        return mode
    fusion = fusion or Fusion()
    return "rrf" if fusion.method == "rrf" else f"weighted-{fusion.alpha:g}"


def sweep_rankings() -> dict[str, tuple[str, Fusion]]:
    """What ``--sweep`` evaluates: dense, lexical, RRF and weighted fusion at SWEEP_ALPHAS."""
    rankings = [("dense", Fusion()), ("lexical", Fusion()), ("hybrid", Fusion("rrf"))]
    rankings += [("hybrid", Fusion("weighted", alpha)) for alpha in SWEEP_ALPHAS]
    return {ranking_label(mode, fusion): (mode, fusion) for mode, fusion in rankings}


def retrieve(
    encoder: Encoder,
    index_dir: Path,
    queries: dict[str, str],
    *,
    instruction: str | None,
    k: int,
    exclude_own_id: bool = False,
    progress: bool = False,
    index_type: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    mode: str = "dense",
    fusion: Fusion | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Top-``k`` document ids and scores per query, through the Store; also the timings.

    ``index_type`` searches through that FAISS index type, built in memory from the
    cached vectors (the shared cache keeps its own type). ``mode``/``fusion``: dense,
    lexical or hybrid, as `engine search --mode` ranks.
    """
    label = ranking_label(mode, fusion)
    runs, timing = retrieve_rankings(
        encoder,
        index_dir,
        queries,
        instruction=instruction,
        k=k,
        rankings={label: (mode, fusion or Fusion())},
        exclude_own_id=exclude_own_id,
        progress=progress,
        index_type=index_type,
        nprobe=nprobe,
        ef_search=ef_search,
    )
    return runs[label], timing


def retrieve_rankings(
    encoder: Encoder,
    index_dir: Path,
    queries: dict[str, str],
    *,
    instruction: str | None,
    k: int,
    rankings: dict[str, tuple[str, Fusion]],
    exclude_own_id: bool = False,
    progress: bool = False,
    index_type: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """:func:`retrieve` for several rankings (label -> (mode, fusion)) from one encoding of
    the queries, each ranked by :func:`indexer.search.ranked`, the path `engine search`
    takes. Returns a run per label, and the timings."""
    from indexer.search import ranked
    from indexer.store import Store
    from indexer.vector_index import SearchKnobs

    modes = {mode for mode, _ in rankings.values()}
    store = Store.open(index_dir)
    if store.has_passages:
        store.close()
        return _retrieve_documents_by_passage(
            encoder, index_dir, queries, instruction=instruction, k=k, rankings=rankings,
            exclude_own_id=exclude_own_id, progress=progress,
        )  # fmt: skip
    try:
        built = time.perf_counter()
        searched_index: Any = store
        spec = store.spec
        if modes != {"lexical"}:
            if index_type is not None:
                searched_index = OtherIndexType(store, index_type)
                spec = searched_index.spec
            else:
                store.load_faiss()
        built = time.perf_counter() - built
        knobs = SearchKnobs(nprobe=nprobe, ef_search=ef_search)
        query_ids, results, encode_seconds, search_seconds = _rank_each(
            encoder,
            queries,
            instruction,
            rankings,
            progress,
            # One extra hit, so dropping a query's own id still leaves k.
            lambda vectors, texts, mode, fusion: ranked(
                searched_index, vectors, texts, k + int(exclude_own_id), knobs,
                mode=mode, fusion=fusion,
            ),
        )  # fmt: skip
        doc_ids = store.doc_ids()
    finally:
        store.close()
    runs = {
        label: to_run(query_ids, scores, ids, doc_ids, k, exclude_own_id)
        for label, (scores, ids) in results.items()
    }
    timing = search_timing(
        spec, len(query_ids), encode_seconds, search_seconds, round(built, 3), nprobe, ef_search
    )
    return runs, timing


def search_timing(
    spec: IndexSpec,
    queries: int,
    encode_seconds: float,
    search_seconds: dict[str, float],
    index_load_seconds: float | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> dict[str, Any]:
    """The timing block of a result: encoding the queries once, then one search per ranking."""
    searched = sum(search_seconds.values())
    timing = {
        "index_type": spec.describe(),
        "index_load_seconds": index_load_seconds,
        "nprobe": nprobe,
        "ef_search": ef_search,
        "query_encode_seconds": round(encode_seconds, 3),
        "search_seconds": round(searched, 3),
        "queries_per_second": round(
            queries * len(search_seconds) / max(encode_seconds + searched, 1e-9), 2
        ),
    }
    if len(search_seconds) > 1:
        timing["search_seconds_by_ranking"] = search_seconds
    return timing


def to_run(
    query_ids: list[str],
    scores: np.ndarray,
    ids: np.ndarray,
    doc_ids: dict[int, str],
    k: int,
    exclude_own_id: bool,
) -> dict[str, dict[str, float]]:
    """Query id -> {document id: score}, at most ``k`` each, a query's own id left out
    where the dataset asks it."""
    run: dict[str, dict[str, float]] = {}
    for query_id, row_scores, row_ids in zip(query_ids, scores, ids, strict=True):
        hits: dict[str, float] = {}
        for score, faiss_id in zip(row_scores, row_ids, strict=True):
            doc_id = doc_ids.get(int(faiss_id)) if faiss_id >= 0 else None
            if doc_id is None or (exclude_own_id and doc_id == query_id):
                continue
            if len(hits) < k:
                hits[doc_id] = float(score)
        run[query_id] = hits
    return run


def _retrieve_documents_by_passage(
    encoder: Encoder,
    index_dir: Path,
    queries: dict[str, str],
    *,
    instruction: str | None,
    k: int,
    rankings: dict[str, tuple[str, Fusion]],
    exclude_own_id: bool,
    progress: bool,
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """:func:`retrieve_rankings` on an index of passages: ``k`` distinct documents per query,
    each scored by its best passage, in each ranking's mode, as `engine search` ranks them."""
    from indexer.search import passage_hits
    from indexer.store import Store

    store = Store.open(index_dir)
    try:
        store.load_faiss()
        spec = store.spec
        query_ids, found, encode_seconds, search_seconds = _rank_each(
            encoder,
            queries,
            instruction,
            rankings,
            progress,
            lambda vectors, texts, mode, fusion: passage_hits(
                store, vectors, k + int(exclude_own_id), queries=texts, mode=mode, fusion=fusion
            ),
        )
    finally:
        store.close()
    runs = {
        label: {
            query_id: dict(
                [
                    (hit.doc_id, hit.score)
                    for hit in hits
                    if not (exclude_own_id and hit.doc_id == query_id)
                ][:k]
            )
            for query_id, hits in zip(query_ids, ranked_hits, strict=True)
        }
        for label, ranked_hits in found.items()
    }
    return runs, search_timing(spec, len(query_ids), encode_seconds, search_seconds)


def _rank_each(
    encoder: Encoder,
    queries: dict[str, str],
    instruction: str | None,
    rankings: dict[str, tuple[str, Fusion]],
    progress: bool,
    rank: Callable[[Any, list[str], str, Fusion], Any],
) -> tuple[list[str], dict[str, Any], float, dict[str, float]]:
    """Encode the queries once (not at all for lexical rankings only), then ``rank`` them for
    each ranking, timed: query ids, results per label, encoding and search seconds."""
    query_ids = list(queries)
    texts = [queries[q] for q in query_ids]
    started = time.perf_counter()
    vectors = None
    if {mode for mode, _ in rankings.values()} != {"lexical"}:
        vectors = encoder.encode_queries(texts, instruction, progress=progress)
    encode_seconds = time.perf_counter() - started
    results, search_seconds = {}, {}
    for label, (mode, fusion) in rankings.items():
        began = time.perf_counter()
        results[label] = rank(vectors, texts, mode, fusion)
        search_seconds[label] = round(time.perf_counter() - began, 3)
    return query_ids, results, encode_seconds, search_seconds


def evaluate_dataset(
    encoder: Encoder,
    folder: str | Path,
    *,
    split: str | None = None,
    instruction: Any = PROFILE_DEFAULT,
    cache_dir: str | Path | None = None,
    k: int = DEFAULT_TOP_K,
    progress: bool = False,
    dataset: BeirDataset | None = None,
    index_type: str | None = None,
    nprobe: int | None = None,
    ef_search: int | None = None,
    group: IndexingGroup | None = None,
    passages: PassageSpec | None = None,
    mode: str = "dense",
    fusion: Fusion | None = None,
    sweep: bool = False,
) -> dict[str, Any]:
    """Index (cached), retrieve and score one BEIR dataset folder with ``encoder``.

    ``instruction``: ``PROFILE_DEFAULT`` (the dataset's paper instruction when the
    model is instruction-tuned, else none), ``PAPER_INSTRUCTION``, ``None`` for
    none, or a string.
    ``passages``: index documents as passages (``engine index --passages``), a document
    scored by its best passage.
    Documents are encoded at ``encoder.max_length`` tokens. ``index_type``,
    ``nprobe`` and ``ef_search`` pick the FAISS index searched (see :func:`retrieve`).
    ``group``: the ranks of a ``torchrun`` launch that encode the corpus (None: this process).
    ``mode``/``fusion``: how the run is ranked (dense by default: the model's figure);
    ``sweep`` also scores every ranking of :func:`sweep_rankings` (``rankings`` in the
    result), from one encoding of the queries.
    """
    from indexer.indexing import update_index

    started = time.perf_counter()
    data = dataset or load_beir(Path(folder), split)
    used_instruction = resolve_instruction(encoder, data.name, instruction)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    index_dir = index_dir_for(cache_dir, data.name, encoder, passages)
    report = update_index(
        index_dir, encoder, data.corpus, progress=progress, group=group, passages=passages
    )
    exclude_own_id = ignores_identical_ids(data.name)
    fusion = fusion or Fusion()
    label = ranking_label(mode, fusion)
    rankings = {**(sweep_rankings() if sweep else {}), label: (mode, fusion)}
    runs, query_timing = retrieve_rankings(
        encoder,
        index_dir,
        data.queries,
        instruction=used_instruction,
        k=k,
        rankings=rankings,
        exclude_own_id=exclude_own_id,
        progress=progress,
        index_type=index_type,
        nprobe=nprobe,
        ef_search=ef_search,
    )
    scored = {name: evaluate_run(data.qrels, run) for name, run in runs.items()}
    extra = {"rankings": scored} if sweep else {}
    # The top 10 of every query, so another run can be compared with this one (--reference).
    top10 = {
        query: [doc for doc, _ in sorted(hits.items(), key=lambda h: -h[1])[:10]]
        for query, hits in runs[label].items()
    }
    return {
        "dataset": data.name,
        "canonical_name": known_name(data.folder),
        "folder": str(data.folder),
        "split": data.split,
        "instruction": used_instruction,
        "query_example": encoder.format_query(next(iter(data.queries.values())), used_instruction),
        "max_length": encoder.max_length,
        "passages": passages.to_settings() if passages is not None else None,
        "k": k,
        "ignore_identical_ids": exclude_own_id,
        "documents": len(data.corpus),
        "skipped_records": len(data.skipped),
        "queries": len(data.queries),
        "judgements": sum(len(judged) for judged in data.qrels.values()),
        "mode": mode,
        "fusion": fusion.describe() if mode == "hybrid" else None,
        "metrics": scored[label],
        **extra,
        "top10": top10,
        "index": {"folder": str(index_dir), **report.to_dict()},
        "timing": {
            "index_seconds": round(report.seconds, 3),
            "encoded_documents": report.encoded,
            # None when every vector came from the cache (nothing was encoded).
            "docs_per_second": (
                round(report.encoded / report.seconds, 2) if report.encoded else None
            ),
            **query_timing,
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    }


# ----------------------------------------------------------------------- CLI
def resolve_folders(data_dir: Path | None, names: list[str], download_dir: Path) -> list[Path]:
    """Dataset folders from ``--data-dir`` and ``--datasets`` (downloading what is missing)."""
    if data_dir is not None and not data_dir.exists() and not names:
        raise EngineError(f"--data-dir not found: {data_dir}")
    if data_dir is not None and is_beir_folder(data_dir):
        if names and names != [data_dir.name]:
            raise EngineError(
                f"--data-dir {data_dir} is one dataset ({data_dir.name}); "
                "drop --datasets or point --data-dir at the folder holding the datasets"
            )
        return [data_dir]
    if not names:
        if data_dir is None:
            raise EngineError("name the datasets: --datasets scifact,nfcorpus (and --data-dir)")
        found = sorted(p for p in data_dir.iterdir() if p.is_dir() and expand_group(p))
        if not found:
            raise EngineError(f"no BEIR dataset folders in {data_dir} (corpus.jsonl, qrels/)")
        names = [p.name for p in found]
    folders: list[Path] = []
    for name in names:
        folders.extend(expand_group(locate_dataset(name, data_dir, download_dir)))
    return folders


def group_averages(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Sub-datasets (``cqadupstack/android``, ...) averaged into their group, as BEIR reports them."""
    members: dict[str, list[dict[str, float]]] = {}
    for result in results:
        if "/" in result["dataset"]:
            members.setdefault(result["dataset"].split("/")[0], []).append(result["metrics"])
    return {group: average(metrics) for group, metrics in members.items()}


def overall_average(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over datasets, a group (CQADupStack) counting once."""
    units = [r["metrics"] for r in results if "/" not in r["dataset"]]
    return average(units + list(group_averages(results).values()))


def result_filename(
    model: str,
    datasets: list[str],
    max_length: int,
    index_type: str | None = None,
    precision: str = "fp32",
    ranking: str = "dense",
    passages: PassageSpec | None = None,
    runtime: str = "torch",
) -> str:
    model_slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(model).name or model).strip("-")
    names = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", d) for d in datasets)
    if len(names) > 80:
        names = f"{len(datasets)}-datasets"
    kind = "-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", index_type).strip("-") if index_type else ""
    suffix = encoding_suffix(precision, runtime)
    if passages is not None:
        suffix += f"-passages{passages.tokens}"
    ranked_by = "" if ranking == "dense" else f"-{ranking}"
    return f"beir-{model_slug}-{names}-{max_length}{kind}{suffix}{ranked_by}.json"


def compare_with_reference(results: list[dict], reference: dict) -> None:
    """Add ``vs_reference`` to each result whose dataset the reference run also scored:
    the nDCG@10 difference and the share of queries with the same top-10 set."""
    earlier = {r["dataset"]: r for r in reference.get("datasets", [])}
    for result in results:
        other = earlier.get(result["dataset"])
        if other is None or "top10" not in other:
            result["vs_reference"] = None
            continue
        queries = sorted(set(result["top10"]) & set(other["top10"]))
        same = sum(set(result["top10"][q]) == set(other["top10"][q]) for q in queries)
        difference = result["metrics"]["ndcg@10"] - other["metrics"]["ndcg@10"]
        result["vs_reference"] = {
            "ndcg@10_difference": round(difference, 5),
            "queries_compared": len(queries),
            "same_top10_share": round(same / len(queries), 4) if queries else None,
        }


def format_table(rows: list[tuple[str, dict[str, float]]]) -> str:
    """One line per dataset (and the average), one column per metric."""
    headers = {
        m: m.replace("ndcg", "nDCG")
        .replace("map", "MAP")
        .replace("recall", "R")
        .replace("mrr", "MRR")
        for m in METRICS
    }
    width = max(len("dataset"), *(len(name) for name, _ in rows))
    lines = [f"{'dataset':<{width}}  " + "  ".join(f"{headers[m]:>9}" for m in METRICS)]
    for name, metrics in rows:
        cells = "  ".join(f"{metrics[m]:>9.4f}" if m in metrics else f"{'':>9}" for m in METRICS)
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)


def sweep_table(results: list[dict[str, Any]]) -> str:
    """nDCG@10 of every ranking (rows) on every dataset (columns), and the difference to dense."""
    names = [r["dataset"] for r in results]
    lines = ["ranking".ljust(14) + "".join(f"{n:>12}{'vs dense':>10}" for n in names)]
    for label in results[0]["rankings"]:
        cells = ""
        for result in results:
            value = result["rankings"][label]["ndcg@10"]
            delta = value - result["rankings"]["dense"]["ndcg@10"]
            cells += f"{value:>12.4f}{delta:>+10.4f}"
        lines.append(label.ljust(14) + cells)
    return "nDCG@10 by ranking\n" + "\n".join(lines)


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="ENGINE_BEIR_DIR",
    show_envvar=True,
    help="A folder of BEIR datasets (--datasets picks sub-folders), or one dataset folder.",
)
@click.option(
    "--datasets",
    help="Comma-separated dataset folder names, e.g. scifact,nfcorpus (default: all in --data-dir). "
    "Missing ones are downloaded from the official BEIR site when online.",
)
@click.option("--split", help="qrels split (default: test; dev for msmarco).")
@model_option()
@click.option(
    "--max-length",
    type=click.IntRange(min=8),
    default=DEFAULT_MAX_LENGTH,
    show_default=True,
    help="Tokens per document (and query), special tokens included; capped at the model's maximum.",
)
@click.option(
    "--instruct/--no-instruct",
    default=None,
    help="Task instructions on queries (default: on for instruction-tuned models, from the profile).",
)
@click.option(
    "--instruction", help="One custom query instruction for every dataset (implies --instruct)."
)
@click.option(
    "-k",
    "k",
    type=click.IntRange(min=1),
    default=DEFAULT_TOP_K,
    show_default=True,
    help="Documents retrieved per query.",
)
@index_type_option(
    "Search through this FAISS index type, built in memory from the cached vectors "
    "(default: the cached index's own, exact at BEIR sizes)."
)
@search_knob_options
@passage_options(
    "Index documents as passages of TOKENS tokens (engine index --passages); a document "
    "scores its best passage, in every --mode."
)
@search_mode_options(MODES, METHODS, "dense: the model's own figure")
@click.option(
    "--sweep",
    is_flag=True,
    help="Also score dense, lexical, RRF and weighted fusion at alpha 0.1..0.9 (one "
    "encoding of the queries); the table and JSON list each.",
)
@batch_tokens_option()
@device_option()
@precision_option()
@runtime_option()
@click.option(
    "--reference",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A results JSON of an earlier run (e.g. torch fp32) to compare with: per dataset, "
    "the nDCG@10 difference and the share of queries whose top-10 set is the same.",
)
@cache_dir_option()
@results_dir_option("results JSON")
@quiet_option()
@json_option()
def beir(
    data_dir: Path | None,
    datasets: str | None,
    split: str | None,
    model: str | None,
    max_length: int,
    instruct: bool | None,
    instruction: str | None,
    k: int,
    index_type: str | None,
    nprobe: int | None,
    ef_search: int | None,
    passage_tokens: int | None,
    passage_overlap: int | None,
    mode: str | None,
    fusion: str | None,
    alpha: float | None,
    sweep: bool,
    batch_tokens: int | None,
    device: str | None,
    precision: str | None,
    runtime: str | None,
    reference: Path | None,
    cache_dir: Path | None,
    out: Path,
    quiet: bool,
    as_json: bool,
) -> None:
    """Evaluate retrieval on BEIR datasets with the paper's protocol.

    Queries get the dataset's task instruction (through the model's template),
    documents are "title text" without one, first --max-length tokens; the test
    split (msmarco: dev); top 1000 per query; nDCG/MAP/recall with pytrec_eval
    and MRR@10 as BEIR computes them. Each corpus is indexed once per model and
    length into the cache; later runs reuse it.

    \b
    Examples:
      engine bench beir --data-dir ../shared/data/beir --datasets scifact,nfcorpus
      engine bench beir --data-dir ../shared/data/beir/scifact --max-length 256
      engine bench beir --data-dir data --datasets scifact --model ./my-model --no-instruct
      engine bench beir --data-dir data --datasets fiqa --instruction "Given a question, retrieve answers" --json
      engine bench beir --data-dir data --datasets scifact --index-type hnsw --ef-search 64
      engine bench beir --data-dir data --datasets scifact,nfcorpus --mode hybrid --fusion rrf
      engine bench beir --data-dir data --datasets scifact,nfcorpus --max-length 256 --sweep
      engine bench beir --data-dir data --datasets scifact --passages 256
      engine bench beir --data-dir data --datasets scifact,nfcorpus --max-length 256 \\
        --runtime openvino --reference results/beir-all-MiniLM-L6-v2-scifact-nfcorpus-256.json
    """
    from engine.encoder import Encoder
    from indexer.distributed import IndexingGroup
    from indexer.folder import utc_now

    if instruction is not None and instruct is False:
        raise EngineError("--instruction and --no-instruct exclude each other")
    if instruction is not None and not instruction.strip():
        raise EngineError("--instruction is empty")
    if index_type is not None:
        from indexer.vector_index import validate_type

        index_type = validate_type(index_type)
    cache_dir = cache_dir or default_cache_dir()
    settings = passage_spec(passage_tokens, passage_overlap, None)
    passages = PassageSpec(**settings) if settings is not None else None
    if passages is not None and index_type is not None:
        raise EngineError("--passages searches the cached index's own type; drop --index-type")
    from indexer.search import resolve_fusion

    mode = mode or "dense"
    fused = resolve_fusion(fusion, alpha)

    def load_datasets() -> list[BeirDataset]:
        names = [n.strip() for n in (datasets or "").split(",") if n.strip()]
        folders = resolve_folders(data_dir, names, cache_dir / "beir" / "datasets")
        return [load_beir(folder, split) for folder in folders]

    # Under torchrun every rank encodes; rank 0 alone reads the data, writes the indexes, scores.
    with IndexingGroup() as group:
        loaded = group.writer_decides(load_datasets, share=False)
        encoder = Encoder.load(
            model,
            device=group.device(device),
            batch_tokens=batch_tokens,
            precision=precision,
            runtime=runtime,
        )
        encoder.set_max_length(min(max_length, encoder.model_max_positions))
        if not group.is_writer:
            group.encode_for_writer(encoder)
            return
        if instruction is not None:
            chosen: Any = instruction.strip()
        elif instruct is None:
            chosen = PROFILE_DEFAULT
        elif instruct:
            chosen = PAPER_INSTRUCTION
        else:
            chosen = None
        progress = progress_enabled(not quiet and not as_json)

        results = []
        for data in loaded:
            if progress:
                click.echo(
                    f"{data.name} ({data.split}): {len(data.corpus)} documents, "
                    f"{len(data.queries)} queries",
                    err=True,
                )
            results.append(
                evaluate_dataset(
                    encoder,
                    data.folder,
                    instruction=chosen,
                    cache_dir=cache_dir,
                    k=k,
                    progress=progress,
                    dataset=data,
                    index_type=index_type,
                    nprobe=nprobe,
                    ef_search=ef_search,
                    mode=mode,
                    fusion=fused,
                    sweep=sweep,
                    group=group,
                    passages=passages,
                )
            )

    summary = {
        "benchmark": "beir",
        "engine_version": __version__,
        "created": utc_now(),
        "command": command_line(click.get_current_context()),
        "model": encoder.name,
        "fingerprint": encoder.fingerprint,
        "dim": encoder.dim,
        "pooling": encoder.profile.pooling,
        "pool_instruction": encoder.profile.pool_instruction,
        "instruction_tuned": encoder.profile.instruction_tuned,
        "query_template": encoder.profile.query_template,
        "max_length": encoder.max_length,
        "device": str(encoder.device),
        "ranks": group.world,
        "precision": encoder.precision,
        "runtime": encoder.runtime,
        "batch_tokens": encoder.batch_tokens,
        "k": k,
        "index_type": index_type,
        "nprobe": nprobe,
        "ef_search": ef_search,
        "passages": settings,
        "mode": mode,
        "fusion": fused.describe() if mode == "hybrid" else None,
        "metrics_order": list(METRICS),
        "datasets": results,
        "groups": group_averages(results),
        "average": overall_average(results),
    }
    if reference is not None:
        summary["reference"] = str(reference)
        compare_with_reference(results, json.loads(reference.read_text()))
    out.mkdir(parents=True, exist_ok=True)
    units = list(dict.fromkeys(r["dataset"].split("/")[0] for r in results))
    ranking = "sweep" if sweep else ranking_label(mode, fused)
    path = out / result_filename(
        encoder.name,
        units,
        encoder.max_length,
        index_type,
        encoder.precision,
        ranking,
        passages,
        encoder.runtime,
    )
    path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(
        f"Model {encoder.name} ({encoder.fingerprint[:12]}), max {encoder.max_length} tokens, "
        f"top {k}, on {encoder.device}"
        + (f"; passages of {passages.describe()}" if passages is not None else "")
    )
    for result in results:
        timing = result["timing"]
        encoded = (
            f"encoded {timing['encoded_documents']} documents, {timing['docs_per_second']} docs/s"
            if timing["encoded_documents"]
            else "all documents from the cached index"
        )
        click.echo(
            f"{result['dataset']} ({result['split']}): {result['documents']} documents, "
            f"{result['queries']} queries; {encoded}; {timing['queries_per_second']} queries/s"
        )
        click.echo(f"  instruction: {result['instruction'] or 'none'}")
        versus = result.get("vs_reference")
        if versus:
            click.echo(
                f"  vs {reference}: nDCG@10 {versus['ndcg@10_difference']:+.5f}, same top-10 set "
                f"for {versus['same_top10_share']:.1%} of {versus['queries_compared']} queries"
            )
    rows = [(r["dataset"], r["metrics"]) for r in results]
    rows += list(summary["groups"].items())
    if len(results) > 1:
        rows.append(("average", summary["average"]))
    click.echo(format_table(rows))
    if sweep:
        click.echo(sweep_table(results))
    click.echo(f"Wrote {path}")
