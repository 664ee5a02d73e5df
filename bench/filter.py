"""`engine bench filter`: latency of filtered dense search (``--where``) at N documents."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from engine.options import json_option, results_dir_option

GROUPS = 100  # document i is in group i % 100: `group = 7` matches 1% of the documents


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_store(folder: Path, documents: int, dim: int, index_type: str) -> float:
    """A store of ``documents`` random vectors with metadata ``{"group": i % 100}``; seconds."""
    from indexer.store import Writer

    settings = {
        "model": "random-vectors",
        "fingerprint": "f" * 64,
        "dim": dim,
        "max_length": 16,
        "engine_version": "bench",
        "index_type": index_type,
    }
    started = time.perf_counter()
    with Writer(folder, settings, rebuild=False) as store:
        store.load_faiss()
        for start in range(0, documents, 20_000):
            stop = min(documents, start + 20_000)
            rows = [
                {
                    "doc_id": str(i),
                    "source": f"s/{i % GROUPS}/{i}.txt",
                    "title": "",
                    "text": "",
                    "content_hash": str(i),
                    "token_count": 1,
                    "metadata": json.dumps({"group": i % GROUPS}),
                }
                for i in range(start, stop)
            ]
            store.commit(upsert=rows, vectors=random_unit(stop - start, dim, seed=start))
    return time.perf_counter() - started


def reusable(folder: Path, documents: int, dim: int, index_type: str) -> bool:
    """Whether ``folder`` holds this benchmark's index (kept by ``--store``); an index of
    another size or type there is refused in one line rather than replaced."""
    from indexer.store import Store

    if not folder.exists():
        return False
    store = Store.open(folder)
    try:
        made = (store.count(), int(store.settings["dim"]), store.spec.type)
    finally:
        store.close()
    if made != (documents, dim, index_type):
        raise click.ClickException(
            f"{folder} holds {made[0]} documents of dim {made[1]} ({made[2]}), not "
            f"{documents} of dim {dim} ({index_type}); use another --store"
        )
    return True


@click.command("filter")
@click.option("--documents", default=1_000_000, show_default=True, type=click.IntRange(min=100))
@click.option("--dim", default=384, show_default=True, type=click.IntRange(min=2))
@click.option("--index-type", default="flat-fp16", show_default=True, help="FAISS index type.")
@click.option("--queries", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the generated index here and reuse it when it holds --documents documents "
    "(build once, then time the searches alone, e.g. under a CPU lock). Default: a "
    "temporary folder.",
)
@results_dir_option("results JSON")
@json_option()
@click.pass_context
def filter_benchmark(
    context: click.Context,
    documents: int,
    dim: int,
    index_type: str,
    queries: int,
    k: int,
    store_dir: Path | None,
    out: Path,
    as_json: bool,
) -> None:
    """Latency of filtered dense search: a metadata filter matching 1% of N random vectors.

    Times `Store.matching` (the filter in SQLite) and the search inside FAISS apart and
    together, one query at a time, for `--where 'group = 7'` (1%) and `--source 's/7/*'`
    (the same 1%, by path glob), and checks every query gets k hits of the group. The
    vectors are random (the filter's cost does not depend on what they mean).

    \b
    Examples:
      engine bench filter --out bench/results
      engine bench filter --documents 100000 --index-type hnsw
      engine bench filter --store /tmp/filter-1m --documents 1000000   # build, keep
      flock /tmp/engine-cpu.lock engine bench filter --store /tmp/filter-1m --out bench/results
    """
    from bench.common import command_line, latency_ms, machine, peak_rss_mb
    from indexer.filters import parse, source_glob
    from indexer.search import ranked
    from indexer.store import Store

    filters = {"where group = 7": parse("group = 7"), "source s/7/*": source_glob("s/7/*")}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="engine-filter-") as tmp:
        folder = store_dir or Path(tmp) / "index"
        build_s = None
        if not reusable(folder, documents, dim, index_type):
            build_s = round(build_store(folder, documents, dim, index_type), 1)
        store = Store.open(folder)
        vectors = random_unit(queries, dim, seed=10**9)
        for label, condition in filters.items():
            matching, searching, total = [], [], []
            for query in vectors:
                started = time.perf_counter()
                allowed = store.matching(condition)
                matched = time.perf_counter()
                _, ids = ranked(store, query[None, :], [], k, allowed=allowed)
                done = time.perf_counter()
                matching.append(matched - started)
                searching.append(done - matched)
                total.append(done - started)
                if (ids >= 0).sum() != min(k, len(allowed)) or not set(ids[0]) <= set(allowed):
                    raise click.ClickException(f"{label}: a query did not get k matching hits")
            results[label] = {
                "matching_documents": len(allowed),
                "total": latency_ms(total),
                "filter_in_sqlite": latency_ms(matching),
                "search_in_faiss": latency_ms(searching),
            }
            if not as_json:
                click.echo(
                    f"{label}: {len(allowed)} match; p50 {results[label]['total']['p50_ms']} ms "
                    f"(filter {results[label]['filter_in_sqlite']['p50_ms']} ms, search "
                    f"{results[label]['search_in_faiss']['p50_ms']} ms)",
                    err=True,
                )
        store.close()
    record = {
        "command": command_line(context),
        "machine": machine(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "documents": documents,
        "dim": dim,
        "index_type": index_type,
        "k": k,
        "queries": queries,
        "build_s": build_s,  # None: a kept --store was reused
        "goal": "a filter matching 1% of 1M documents answers in <= 20 ms on 2 cores",
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"filter-{documents // 1000}k-{index_type}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(json.dumps(record) if as_json else f"wrote {path}", err=not as_json)
