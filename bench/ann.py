"""`engine bench ann`: the FAISS index types against exact search.

For each index type (indexer.vector_index): recall@10 against exact inner-product
search, queries/s one query at a time and in one batch, build time, the index's
size in memory/on disk (its serialized bytes) and the process's peak RSS, over a
sweep of the search knob (efSearch for HNSW, nprobe for IVF). Two sources:

* ``--beir FOLDER``: the vectors of a BEIR corpus as the engine encoded them (the
  cached index of ``engine bench beir``, or ``--index DIR``), the dataset's own
  queries, and nDCG@10 per type next to recall. When those vectors are stored as
  fp32 (an index from before migration 2) the effect of fp16 storage on nDCG@10
  is measured on the same vectors.
* ``--synthetic N``: N x ``--dim`` clustered unit vectors (a seeded mixture in a
  low-dimensional latent space, not uniform noise), cached as fp16 under
  ``--work-dir`` with their exact top-10, so each type can run in its own process.

``--store`` instead builds a real engine index of the synthetic set (documents with
short synthetic text) through the store's own writer with the first type, and
records its disk use against fp16 vectors + text and a cold open + first search
in a fresh process. Results merge into one JSON per source (one entry per type)
with a plot of recall@10 against single-query queries/s.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.common import command_line, machine, peak_rss_mb
from engine import __version__
from engine.errors import EngineError
from engine.options import cache_dir_option, json_option, model_option, results_dir_option

DEFAULT_TYPES = "flat,flat-fp16,sq8,hnsw,ivf-flat,ivf-pq"
EF_SWEEP = (16, 32, 64, 128, 256)
NPROBE_SWEEP = (4, 8, 16, 32, 64, 128)
K = 10
SINGLE_QUERIES = 200


# ------------------------------------------------------------------ data
def clustered_vectors(n: int, dim: int, seed: int, work_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``n`` base and 1000 query unit vectors (fp16, cached): 1000 clusters in a 64-d latent
    space, projected to ``dim`` with a little isotropic noise (real embeddings are not noise)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    base_path = work_dir / f"clustered-{n}x{dim}-s{seed}.npy"
    query_path = work_dir / f"clustered-{n}x{dim}-s{seed}-queries.npy"
    if not base_path.is_file() or not query_path.is_file():
        rng = np.random.default_rng(seed)
        latent = 64
        centres = rng.standard_normal((1000, latent))
        projection = rng.standard_normal((latent, dim)) / np.sqrt(latent)

        def draw(count: int) -> np.ndarray:
            points = centres[rng.integers(0, len(centres), count)]
            points = points + 0.6 * rng.standard_normal((count, latent))
            x = points @ projection + 0.1 * rng.standard_normal((count, dim))
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

        tmp = base_path.with_suffix(".tmp.npy")
        base = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, dim))
        for start in range(0, n, 100_000):
            base[start : start + 100_000] = draw(min(100_000, n - start))
        base.flush()
        del base
        os.replace(tmp, base_path)
        np.save(query_path, draw(1000))
    return np.load(base_path, mmap_mode="r"), np.load(query_path)


def exact_top(base: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Positions of the exact top-``k`` inner products, scanning ``base`` in chunks."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    q = np.asarray(queries, dtype=np.float32)
    for start in range(0, len(base), chunk):
        scores = q @ np.asarray(base[start : start + chunk], dtype=np.float32).T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        merged_ids = np.hstack([best_ids, top + start])
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
    return best_ids


def stored_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(ids, fp32 vectors as stored, settings) of an engine index, read-only (no migration)."""
    pointer = index_dir / "CURRENT"
    if not pointer.is_file():
        raise EngineError(
            f"no index at {index_dir}: run `engine bench beir` for this dataset first, "
            "or pass --index"
        )
    db = index_dir / json.loads(pointer.read_text())["db"]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        settings = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM settings")}
        rows = conn.execute("SELECT id, vector FROM vectors ORDER BY id").fetchall()
    conn.close()
    dim = int(settings["dim"])
    dtype = np.float32 if rows and len(rows[0][1]) == dim * 4 else np.float16
    ids = np.asarray([r[0] for r in rows], dtype=np.int64)
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=dtype).reshape(len(rows), dim)
    return ids, vectors, {**settings, "stored_dtype": np.dtype(dtype).name}


# -------------------------------------------------------------- measuring
def measure_type(
    index_type: str,
    base: np.ndarray,
    queries: np.ndarray,
    truth: np.ndarray,
    *,
    ef_sweep=EF_SWEEP,
    nprobe_sweep=NPROBE_SWEEP,
    ids: np.ndarray | None = None,
    judge=None,
) -> dict[str, Any]:
    """Build ``index_type`` over ``base`` (positions as ids unless ``ids``) and sweep its knob.

    ``truth``: exact top-10 positions per query. ``judge(found_ids) -> nDCG@10`` when
    relevance judgements exist.
    """
    import faiss

    from indexer import vector_index
    from indexer.vector_index import SearchKnobs

    n, dim = base.shape
    spec = vector_index.resolve(vector_index.validate_type(index_type), n, dim)
    positions = np.arange(n, dtype=np.int64)
    labels = ids if ids is not None else positions
    rss_before = int(peak_rss_mb())
    started = time.perf_counter()
    sample = None
    if spec.needs_training:
        rng = np.random.default_rng(0)
        chosen = np.sort(
            rng.choice(n, size=min(n, vector_index.training_size(spec)), replace=False)
        )
        sample = np.asarray(base[chosen], dtype=np.float32)
    chunks = (
        (labels[s : s + 65536], np.asarray(base[s : s + 65536], dtype=np.float32))
        for s in range(0, n, 65536)
    )
    index = vector_index.build(spec, chunks, sample=sample)
    build_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        vector_index.write(index, Path(tmp) / "index.faiss")
        index_bytes = (Path(tmp) / "index.faiss").stat().st_size
    if spec.is_hnsw:
        knob, sweep = "ef_search", ef_sweep
    elif spec.is_ivf:
        knob, sweep = "nprobe", [p for p in nprobe_sweep if p <= spec.params.get("nlist", 1)]
    else:
        knob, sweep = None, [None]
    truth_labels = labels[truth]
    points = []
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    factor = int(spec.params.get("rerank", 0))
    where = {int(label): row for row, label in enumerate(labels)} if ids is not None else None

    def stored(wanted: list[int]) -> np.ndarray:
        rows = wanted if where is None else [where[w] for w in wanted]
        return np.asarray(base[rows], dtype=np.float32)

    def run(batch: np.ndarray, knobs: SearchKnobs) -> np.ndarray:
        _, found = vector_index.search(index, spec, batch, K * (factor or 1), knobs=knobs)
        if factor:  # as the store does: candidates re-scored with the stored vectors
            _, found = vector_index.rerank(batch, found, stored, K)
        return found

    for value in sweep:
        knobs = SearchKnobs(**({knob: value} if knob else {}))
        started = time.perf_counter()
        found = run(q32, knobs)
        batched = len(q32) / (time.perf_counter() - started)
        single = min(SINGLE_QUERIES, len(q32))
        started = time.perf_counter()
        for i in range(single):
            run(q32[i : i + 1], knobs)
        single_seconds = (time.perf_counter() - started) / single
        recall = float(
            np.mean([len(set(t) & set(f)) / K for t, f in zip(truth_labels, found, strict=True)])
        )
        point = {
            "knob": knob,
            "value": value,
            "recall@10": round(recall, 4),
            "single_ms": round(single_seconds * 1000, 3),
            "single_qps": round(1 / single_seconds, 1),
            "batched_qps": round(batched, 1),
        }
        if judge is not None:
            point["ndcg@10"] = judge(found)
        points.append(point)
    return {
        "threads": faiss.omp_get_max_threads(),
        "type": index_type,
        "spec": spec.describe(),
        "factory": spec.factory,
        "build_seconds": round(build_seconds, 2),
        "index_bytes": index_bytes,
        "bytes_per_vector": round(index_bytes / max(n, 1), 1),
        "peak_rss_mb": int(peak_rss_mb()),
        "peak_rss_growth_mb": int(peak_rss_mb()) - rss_before,
        "default_params": spec.params,
        "points": points,
    }


def store_goals(
    base: np.ndarray, queries: np.ndarray, truth: np.ndarray, index_type: str, work_dir: Path
) -> dict[str, Any]:
    """A real engine index of the synthetic set (through the store's writer) with ``index_type``:
    disk against fp16 vectors + text, cold open + first search in a fresh process, recall."""
    import shutil

    from indexer.documents import Document
    from indexer.store import Store, Writer

    n, dim = base.shape
    folder = work_dir / f"store-{n}x{dim}-{re.sub(r'[^A-Za-z0-9]+', '-', index_type)}"
    shutil.rmtree(folder, ignore_errors=True)
    settings = {
        "model": "synthetic",
        "fingerprint": "0" * 64,
        "dim": dim,
        "max_length": 0,
        "engine_version": __version__,
        "index_type": index_type,
    }
    text_bytes = 0
    started = time.perf_counter()
    with Writer(folder, settings, rebuild=False) as store:
        store.load_faiss()
        for start in range(0, n, 50_000):
            rows = []
            for i in range(start, min(n, start + 50_000)):
                text = f"Synthetic document {i}: a short passage that stands for real text."
                text_bytes += len(text.encode())
                rows.append(
                    {
                        "id": None,
                        "doc_id": f"d{i}",
                        "source": "synthetic",
                        "title": "",
                        "text": text,
                        "content_hash": Document(f"d{i}", "synthetic", "", text).content_hash,
                        "token_count": 12,
                    }
                )
            store.commit(upsert=rows, vectors=np.asarray(base[start : start + len(rows)]))
    index_seconds = time.perf_counter() - started
    files = {f.name: f.stat().st_size for f in folder.iterdir() if f.is_file()}
    disk = sum(files.values())
    payload = n * dim * 2 + text_bytes
    probe = (
        "import time, numpy as np; t = time.perf_counter(); "
        "from indexer.store import Store; s = Store.open(%r); "
        "q = np.load(%r)[:1].astype('float32'); s.search(q, 10); "
        "print(time.perf_counter() - t)"
    )
    query_file = folder.parent / "store-probe-query.npy"
    np.save(query_file, np.asarray(queries[:1], dtype=np.float32))
    cold = []
    for _ in range(3):
        result = subprocess.run(
            [sys.executable, "-c", probe % (str(folder), str(query_file))],
            capture_output=True,
            text=True,
            check=True,
        )
        cold.append(round(float(result.stdout.strip().splitlines()[-1]), 3))
    store = Store.open(folder)
    store.load_faiss()
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    started = time.perf_counter()
    for i in range(SINGLE_QUERIES):
        store.search(q32[i : i + 1], K)
    warm_ms = (time.perf_counter() - started) / SINGLE_QUERIES * 1000
    _, found = store.search(q32, K)
    recall = float(
        np.mean([len(set(t + 1) & set(f)) / K for t, f in zip(truth, found, strict=True)])
    )
    store.close()
    return {
        "type": index_type,
        "documents": n,
        "index_seconds": round(index_seconds, 1),
        "disk_bytes": disk,
        "fp16_vectors_plus_text_bytes": payload,
        "disk_ratio": round(disk / payload, 3),
        "database_bytes": sum(v for k, v in files.items() if k.endswith(".db")),
        "snapshot_bytes": sum(v for k, v in files.items() if k.endswith(".faiss")),
        "sqlite": sqlite_space(folder),
        "cold_open_first_search_seconds": cold,
        "warm_single_query_ms": round(warm_ms, 3),
        "recall@10": round(recall, 4),
        "note": "cold = a fresh Python process: imports, Store.open, load (mapped) snapshot, one "
        "search; the page cache was warm (no root to drop it)",
    }


def sqlite_space(folder: Path) -> dict[str, Any]:
    """Where the current database's bytes go: page size and bytes per table/index (dbstat)."""
    db = folder / json.loads((folder / "CURRENT").read_text())["db"]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        space: dict[str, Any] = {
            "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
            "free_pages": conn.execute("PRAGMA freelist_count").fetchone()[0],
        }
        try:
            rows = conn.execute(
                "SELECT name, sum(pgsize), sum(payload) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            ).fetchall()
        except sqlite3.OperationalError:  # an SQLite built without the dbstat table
            rows = []
        space["tables"] = {name: {"bytes": size, "payload": used} for name, size, used in rows}
    conn.close()
    return space


# ------------------------------------------------------------------- output
def merge_results(path: Path, header: dict[str, Any], entries: list[dict[str, Any]]) -> dict:
    """One JSON per source: a re-run of a type replaces its entry."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    types = {entry["type"]: entry for entry in data.get("types", [])}
    for entry in entries:
        types[entry["type"]] = entry
    data.update(header)
    data["types"] = list(types.values())
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry in data["types"]:
        points = entry["points"]
        ax.plot(
            [p["single_qps"] for p in points],
            [p["recall@10"] for p in points],
            marker="o",
            label=entry["type"],
        )
        for p in points:
            if p["value"] is not None:
                ax.annotate(str(p["value"]), (p["single_qps"], p["recall@10"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("queries/s, one query at a time (log)")
    ax.set_ylabel("recall@10 vs exact")
    ax.set_title(data["title"], fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


@click.command()
@click.option(
    "--beir",
    "beir_folder",
    type=click.Path(path_type=Path),
    help="A BEIR dataset folder: its cached engine index's vectors and its queries.",
)
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --beir: the engine index whose vectors to use (default: the bench beir cache).",
)
@click.option(
    "--max-length",
    type=int,
    default=512,
    show_default=True,
    help="With --beir: the cached index's document length.",
)
@model_option()
@cache_dir_option()
@click.option(
    "--synthetic",
    type=click.IntRange(min=1000),
    help="N clustered synthetic vectors instead of --beir.",
)
@click.option(
    "--dim", type=click.IntRange(min=8), default=384, show_default=True, help="Synthetic dimension."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Synthetic seed.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(tempfile.gettempdir()) / "engine-bench-ann",
    show_default=True,
    help="Cache of the synthetic set, its exact answers and --store indexes.",
)
@click.option(
    "--types",
    default=DEFAULT_TYPES,
    show_default=True,
    help="Comma-separated index types (or faiss factory strings).",
)
@click.option(
    "--ef-search",
    "ef_sweep",
    default=",".join(map(str, EF_SWEEP)),
    show_default=True,
    help="efSearch values swept for HNSW.",
)
@click.option(
    "--nprobe",
    "nprobe_sweep",
    default=",".join(map(str, NPROBE_SWEEP)),
    show_default=True,
    help="nprobe values swept for IVF.",
)
@click.option(
    "--store",
    "with_store",
    is_flag=True,
    help="Instead: build a real engine index of the synthetic set with the first type; "
    "record its disk use and cold start.",
)
@results_dir_option("results JSON and plot")
@json_option()
def ann(
    beir_folder: Path | None,
    index_dir: Path | None,
    max_length: int,
    model: str | None,
    cache_dir: Path | None,
    synthetic: int | None,
    dim: int,
    seed: int,
    work_dir: Path,
    types: str,
    ef_sweep: str,
    nprobe_sweep: str,
    with_store: bool,
    out: Path,
    as_json: bool,
) -> None:
    """Compare FAISS index types: recall@10 vs exact, queries/s, build time, memory.

    Run one or a few types per call (results merge per source), e.g. to keep each
    run short on a small machine.

    \b
    Examples:
      engine bench ann --beir ../shared/data/beir/scifact --max-length 256
      engine bench ann --synthetic 1000000 --types hnsw --store
      engine bench ann --synthetic 1000000 --types ivf-flat --nprobe 8,16,32,64
    """
    if (beir_folder is None) == (synthetic is None):
        raise EngineError("give one source: --beir FOLDER or --synthetic N")
    type_list = [t.strip() for t in types.split(",") if t.strip()]
    sweeps = {"ef_sweep": _ints(ef_sweep), "nprobe_sweep": _ints(nprobe_sweep)}
    header: dict[str, Any] = {
        "benchmark": "ann",
        "engine_version": __version__,
        "machine": machine(),
        "k": K,
        "single_queries": SINGLE_QUERIES,
    }
    entries = []
    store = None
    if synthetic is not None:
        base, queries = clustered_vectors(synthetic, dim, seed, work_dir)
        truth_path = work_dir / f"clustered-{synthetic}x{dim}-s{seed}-top{K}.npy"
        if not truth_path.is_file():
            np.save(truth_path, exact_top(base, queries, K))
        truth = np.load(truth_path)
        name = f"synthetic-{synthetic}x{dim}"
        header |= {
            "source": f"synthetic clustered unit vectors, seed {seed} (1000 clusters in a 64-d "
            "latent space projected to the dimension, plus noise)",
            "vectors": synthetic,
            "dim": dim,
            "queries": len(queries),
            "title": f"{synthetic:,} x {dim} synthetic clustered vectors, {os.cpu_count()}-core CPU",
        }
        if with_store:
            store = store_goals(base, queries, truth, type_list[0], work_dir)
        else:
            entries = [measure_type(t, base, queries, truth, **sweeps) for t in type_list]
    else:
        entries, header, name = _beir_entries(
            beir_folder, index_dir, max_length, model, cache_dir, type_list, sweeps, header
        )
    header["command"] = command_line(click.get_current_context())
    for entry in entries:
        entry["command"] = header["command"]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ann-{name}.json"
    if store is not None:
        header[f"store_{store['type']}"] = {**store, "command": header["command"]}
    data = merge_results(
        path, {**header, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, entries
    )
    plot(data, path.with_suffix(".png"))
    if as_json:
        click.echo(json.dumps(data))
        return
    for entry in entries:
        click.echo(
            f"{entry['type']:<10} {entry['factory']:<22} build {entry['build_seconds']:>7.1f}s "
            f"{entry['bytes_per_vector']:>7.1f} B/vector"
        )
        for p in entry["points"]:
            knob = f"{p['knob']}={p['value']}" if p["knob"] else "exact scan"
            extra = f"  nDCG@10 {p['ndcg@10']:.4f}" if "ndcg@10" in p else ""
            click.echo(
                f"    {knob:<16} recall@10 {p['recall@10']:.4f}  {p['single_ms']:>8.3f} ms/query"
                f"  {p['batched_qps']:>9.1f} q/s batched{extra}"
            )
    if store is not None:
        click.echo(json.dumps(store, indent=2))
    click.echo(f"Wrote {path} and {path.with_suffix('.png')}")


def _beir_entries(beir_folder, index_dir, max_length, model, cache_dir, type_list, sweeps, header):
    """Entries for the vectors of a BEIR corpus's engine index, with nDCG@10 per point."""
    from bench.beir import PROFILE_DEFAULT, default_cache_dir, index_dir_for, resolve_instruction
    from bench.datasets import ignores_identical_ids, load_beir
    from bench.metrics import evaluate_run
    from engine.encoder import Encoder

    data = load_beir(beir_folder)
    encoder = Encoder.load(model)
    encoder.set_max_length(min(max_length, encoder.model_max_positions))
    folder = index_dir or index_dir_for(cache_dir or default_cache_dir(), data.name, encoder)
    ids, vectors, settings = stored_vectors(folder)
    if settings.get("fingerprint") != encoder.fingerprint:
        raise EngineError(
            f"the index at {folder} was built with {settings.get('model')}, not {encoder.name}"
        )
    with sqlite3.connect(
        f"file:{folder / json.loads((folder / 'CURRENT').read_text())['db']}?mode=ro", uri=True
    ) as conn:
        doc_ids = dict(conn.execute("SELECT id, doc_id FROM documents").fetchall())
    conn.close()
    query_ids = list(data.queries)
    instruction = resolve_instruction(encoder, data.name, PROFILE_DEFAULT)
    queries = encoder.encode_queries([data.queries[q] for q in query_ids], instruction)
    skip_own = ignores_identical_ids(data.name)

    def judge(found: np.ndarray) -> float:
        run = {}
        for query_id, row in zip(query_ids, found, strict=True):
            hits = [doc_ids[int(i)] for i in row if int(i) in doc_ids]
            hits = [h for h in hits if not (skip_own and h == query_id)][:K]
            run[query_id] = {doc: float(K - rank) for rank, doc in enumerate(hits)}
        return round(evaluate_run(data.qrels, run)["ndcg@10"], 5)

    truth = exact_top(vectors, queries, K)
    entries = [
        measure_type(t, vectors, queries, truth, ids=ids, judge=judge, **sweeps) for t in type_list
    ]
    fp32 = vectors.dtype == np.float32
    if fp32:
        # fp16 storage on the same vectors: exact search over fp32 vs over fp16-rounded vectors.
        exact32 = ids[exact_top(vectors, queries, K)]
        exact16 = ids[exact_top(vectors.astype(np.float16), queries, K)]
        header["fp16_storage"] = {
            "ndcg@10_fp32": judge(exact32),
            "ndcg@10_fp16": judge(exact16),
            "top10_overlap": round(
                float(
                    np.mean(
                        [len(set(a) & set(b)) / K for a, b in zip(exact32, exact16, strict=True)]
                    )
                ),
                4,
            ),
        }
    header |= {
        "source": f"{data.name} corpus vectors encoded by the engine ({settings['model']}, "
        f"{settings['max_length']} tokens, stored as {settings['stored_dtype']})",
        "index": str(folder),
        "vectors": len(ids),
        "dim": int(settings["dim"]),
        "queries": len(query_ids),
        "title": f"{data.name}: {len(ids):,} x {settings['dim']} engine vectors, {os.cpu_count()}-core CPU",
    }
    name = f"beir-{data.name}-{settings['max_length']}"
    return entries, header, name
