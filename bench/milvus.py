"""`engine bench milvus`: what the Milvus backend costs next to the local FAISS index.

For each Milvus index type: a full export of an existing index into a fresh
Milvus Lite database, a re-export with nothing changed (the incremental diff
alone), single-query search latency and recall@10 against the local exact
(FAISS flat) search. Queries are stored document vectors drawn at random, so no
model is loaded and only the vector search and the hit fields are timed.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import click

from bench.common import command_line, latency_ms, machine
from engine import __version__
from engine.options import json_option, results_dir_option
from indexer.milvus import MilvusIndex, export_index
from indexer.store import Store

INDEX_TYPES = ("flat", "hnsw", "ivf")


def _latencies(search, queries) -> tuple[list[float], list[list[int]]]:
    times, ids = [], []
    for query in queries:
        started = time.perf_counter()
        found = search(query[None, :])
        times.append(time.perf_counter() - started)
        ids.append([int(i) for i in found if i >= 0])
    return times, ids


def _summary(times: list[float]) -> dict[str, float | None]:
    latency = latency_ms(times)
    return {"p50_ms": latency["p50_ms"], "p95_ms": latency["p95_ms"]}


@click.command("milvus")
@click.option(
    "--index",
    "index_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="An existing engine index (e.g. a BEIR cache index).",
)
@click.option("--queries", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--index-types", default=",".join(INDEX_TYPES), show_default=True)
@results_dir_option("results JSON")
@json_option()
def milvus(index_dir: Path, queries: int, index_types: str, out: Path, as_json: bool) -> None:
    """Export cost, search latency and recall of Milvus Lite against the local FAISS index.

    \b
    Examples:
      engine bench milvus --index ~/.cache/engine/beir/scifact-99277ff56c1d-256
    """

    store = Store.open(index_dir)
    ids = sorted(store.doc_ids())
    sample = random.Random(0).sample(ids, min(queries, len(ids)))
    vectors = store.vectors(sample)
    k = 10
    exact_times, exact = _latencies(lambda q: store.search(q, k)[1][0], vectors)
    results = {"faiss-flat (local)": {**_summary(exact_times), "recall_at_10": 1.0}}
    for index_type in [t.strip() for t in index_types.split(",") if t.strip()]:
        with tempfile.TemporaryDirectory(prefix="engine-milvus-") as tmp:
            uri = str(Path(tmp) / "vectors.db")
            first = export_index(store, uri, index_type=index_type, progress=False)
            again = export_index(store, uri, progress=False)
            backend = MilvusIndex.open(uri)
            backend.search(vectors[:1], k)  # load and warm up
            times, found = _latencies(lambda q, b=backend: b.search(q, k)[1][0], vectors)
            backend.close()
            size = sum(f.stat().st_size for f in Path(uri).rglob("*") if f.is_file())
        recall = statistics.mean(
            len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(exact, found, strict=True)
        )
        results[f"milvus-lite {index_type}"] = {
            **_summary(times),
            "recall_at_10": round(recall, 4),
            "export_seconds": round(first.seconds, 2),
            "export_docs_per_second": round(first.upserted / max(first.seconds, 1e-9), 1),
            "reexport_unchanged_seconds": round(again.seconds, 2),
            "database_bytes": size,
        }
    summary = {
        "benchmark": "milvus",
        "engine_version": __version__,
        "command": command_line(click.get_current_context()),
        "index": str(index_dir),
        "model": store.settings["model"],
        "dim": store.settings["dim"],
        "documents": store.count(),
        "queries": len(sample),
        "query_kind": "stored document vectors drawn at random (seed 0); search only, no encoding",
        "machine": machine(),
        "results": results,
    }
    store.close()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"milvus-{Path(index_dir).name}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        click.echo(json.dumps(summary))
        return
    for name, row in results.items():
        extra = (
            f", export {row['export_docs_per_second']} docs/s, no-change re-export "
            f"{row['reexport_unchanged_seconds']} s"
            if "export_seconds" in row
            else ""
        )
        click.echo(
            f"{name:<20} p50 {row['p50_ms']} ms, p95 {row['p95_ms']} ms, "
            f"recall@10 {row['recall_at_10']}{extra}"
        )
    click.echo(f"Wrote {path}")
