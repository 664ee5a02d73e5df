"""`engine bench lexical`: which BM25 library the lexical index is built on, by measurement.

Three candidates, each with English stopwords and a stemmer and BM25 at k1=1.2, b=0.75:

- ``fts5``: SQLite FTS5 (``porter unicode61``), a contentless table: transactional with the
  store. A long query is pruned to the ``--fts5-terms`` terms of highest IDF (document
  frequencies from ``fts5vocab``), since FTS5 scores every document matching any term.
- ``tantivy``: the Rust engine (``tantivy`` on PyPI): an on-disk, incremental inverted index
  (term frequencies only, no positions), block-max WAND top-k, ids in a fast field.
- ``bm25s``: sparse matrices of precomputed BM25 weights (``bm25s`` + PyStemmer), saved as
  ``.npy`` files; no incremental update (a change rebuilds it).

Recorded per library: nDCG@10 of BM25 alone on SciFact and NFCorpus (test split), against
Anserini's published BM25 figures; and on SciFact itself (5k documents) and on a
synthetic 100k-document corpus: build time, disk against the text's bytes, and query
latency p50/p95 for short queries (the datasets' own 3-10-word queries) and long ones
(200 consecutive words of a real document, as a "more like this paragraph" query).

The 100k corpus is made from the real text of SciFact and NFCorpus: document ``i`` takes the
title of a random real document and, as its text, the first half of that document's words
followed by the second half of another random document's words (seeded), so term
statistics and lengths stay those of real abstracts while every document differs.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench.common import latency_ms
from engine.errors import EngineError
from engine.options import json_option, results_dir_option

# Anserini's BM25 regressions on BEIR v1.0.0 (title and text in one field, "flat", which is
# how engine indexes "title text"; castorini/anserini docs/regressions/
# regressions-beir-v1.0.0-{scifact,nfcorpus}.flat.md) and the "multifield" ones (title and
# text as separate fields; the BEIR paper's Table 2: 0.665 and 0.325).
PUBLISHED_NDCG10 = {
    "scifact": {"anserini_flat": 0.6789, "anserini_multifield": 0.6647},
    "nfcorpus": {"anserini_flat": 0.3218, "anserini_multifield": 0.3254},
}
LIBRARIES = ("fts5", "tantivy", "bm25s")
SHORT_WORDS = (3, 10)
LONG_WORDS = 200
WORD = re.compile(r"\w+")


def document_text(title: str, text: str) -> str:
    return f"{title} {text}".strip()


# ---------------------------------------------------------------- candidates
class Fts5:
    """SQLite FTS5, contentless; OR queries pruned to the rarest ``max_terms`` terms."""

    name = "fts5"

    def __init__(self, max_terms: int = 32) -> None:
        import Stemmer

        self.max_terms = max_terms
        # FTS5's porter tokenizer is Porter's original algorithm, which PyStemmer has too:
        # query words are stemmed the same way to look up their document frequency.
        self.stemmer = Stemmer.Stemmer("porter")

    def build(self, folder: Path, ids: list[int], texts: list[str]) -> None:
        self.path = folder / "fts.db"
        db = sqlite3.connect(self.path)
        db.execute(
            "CREATE VIRTUAL TABLE fts USING fts5(body, content='', "
            "tokenize='porter unicode61 remove_diacritics 2')"
        )
        db.execute("CREATE VIRTUAL TABLE vocab USING fts5vocab(fts, 'row')")
        with db:
            db.executemany(
                "INSERT INTO fts (rowid, body) VALUES (?, ?)", zip(ids, texts, strict=True)
            )
        db.execute("INSERT INTO fts (fts) VALUES ('optimize')")
        db.commit()
        db.close()
        self.db = sqlite3.connect(self.path, check_same_thread=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        words = {w.lower() for w in WORD.findall(query)}
        stems = {self.stemmer.stemWord(w): w for w in words}
        if len(stems) > self.max_terms:
            marks = ",".join("?" * len(stems))
            frequency = dict(
                self.db.execute(f"SELECT term, doc FROM vocab WHERE term IN ({marks})", list(stems))
            )
            kept = sorted((s for s in stems if s in frequency), key=frequency.get)
            words = {stems[s] for s in kept[: self.max_terms]}
        if not words:
            return []
        match = " OR ".join('"' + w.replace('"', '""') + '"' for w in sorted(words))
        rows = self.db.execute(
            "SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?", (match, k)
        )
        return [(rowid, -rank) for rowid, rank in rows]

    def disk_bytes(self) -> int:
        return self.path.stat().st_size


class Tantivy:
    """tantivy with a stopword + Snowball English analyzer, frequencies without positions."""

    name = "tantivy"

    def build(self, folder: Path, ids: list[int], texts: list[str]) -> None:
        import tantivy

        self.tantivy = tantivy
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("id", stored=False, indexed=True, fast=True)
        builder.add_text_field("body", tokenizer_name="english", index_option="freq")
        self.schema = builder.build()
        self.path = folder / "tantivy"
        self.path.mkdir()
        self.index = tantivy.Index(self.schema, path=str(self.path))
        self.analyzer = (
            tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
            .filter(tantivy.Filter.remove_long(40))
            .filter(tantivy.Filter.lowercase())
            .filter(tantivy.Filter.stopword("english"))
            .filter(tantivy.Filter.stemmer("english"))
            .build()
        )
        self.index.register_tokenizer("english", self.analyzer)
        writer = self.index.writer(heap_size=128_000_000, num_threads=2)
        for doc_id, text in zip(ids, texts, strict=True):
            document = tantivy.Document()
            document.add_unsigned("id", doc_id)
            document.add_text("body", text)
            writer.add_document(document)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()
        self.searcher = self.index.searcher()

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tantivy = self.tantivy
        terms = self.analyzer.analyze(query)
        if not terms:
            return []
        clauses = [
            (tantivy.Occur.Should, tantivy.Query.term_query(self.schema, "body", term))
            for term in terms
        ]
        hits = self.searcher.search(tantivy.Query.boolean_query(clauses), k, count=False).hits
        ids = self.searcher.fast_field_values("id", [address for _, address in hits])
        return [(doc_id, score) for doc_id, (score, _) in zip(ids, hits, strict=True)]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


class Bm25s:
    """bm25s (numpy backend) with its English stopwords and PyStemmer's Snowball English."""

    name = "bm25s"

    def build(self, folder: Path, ids: list[int], texts: list[str]) -> None:
        import bm25s
        import numpy as np
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.ids = np.asarray(ids)
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
        retriever.index(tokens, show_progress=False)
        self.path = folder / "bm25s"
        retriever.save(str(self.path))
        self.retriever = bm25s.BM25.load(str(self.path), mmap=False)

    def search(self, query: str, k: int) -> list[tuple[int, float]]:
        tokens = self.bm25s.tokenize(
            [query], stopwords="en", stemmer=self.stemmer, show_progress=False, return_ids=False
        )
        known = [t for t in tokens[0] if t in self.retriever.vocab_dict]
        if not known:
            return []
        k = min(k, len(self.ids))
        docs, scores = self.retriever.retrieve(
            [known], k=k, show_progress=False, n_threads=1, backend_selection="numpy"
        )
        return [
            (int(self.ids[d]), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0
        ]

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def make_candidate(name: str, fts5_terms: int):
    try:
        if name == "fts5":
            return Fts5(fts5_terms)
        return {"tantivy": Tantivy, "bm25s": Bm25s}[name]()
    except ImportError as exc:
        raise EngineError(
            f"{name} needs {exc.name}: pip install bm25s PyStemmer (the dev extra)"
        ) from None


# ------------------------------------------------------------------ corpora
def synthetic_corpus(sources: list[tuple[str, str]], size: int, seed: int = 0) -> list[str]:
    """``size`` documents from real (title, text) pairs: a title and the first half of its
    text's words, then the second half of another random document's words."""
    rng = random.Random(seed)
    split = [(title, text.split()) for title, text in sources]
    out = []
    for _ in range(size):
        title, head = split[rng.randrange(len(split))]
        _, tail = split[rng.randrange(len(split))]
        out.append(document_text(title, " ".join(head[: len(head) // 2] + tail[len(tail) // 2 :])))
    return out


def pick_short_queries(queries: list[str], count: int, seed: int = 0) -> list[str]:
    low, high = SHORT_WORDS
    fitting = [q for q in queries if low <= len(q.split()) <= high]
    return random.Random(seed).sample(fitting, min(count, len(fitting)))


def pick_long_queries(texts: list[str], count: int, seed: int = 0) -> list[str]:
    """``count`` windows of LONG_WORDS consecutive words from random real documents (a short
    document is continued by the next one)."""
    rng = random.Random(seed)
    words = " ".join(texts).split()
    starts = [rng.randrange(len(words) - LONG_WORDS) for _ in range(count)]
    return [" ".join(words[s : s + LONG_WORDS]) for s in starts]


# ---------------------------------------------------------------- measuring
def latency(candidate, queries: list[str], k: int, budget_s: float) -> dict[str, Any]:
    """Per-query wall time (ms) over the queries, stopping after ``budget_s`` seconds."""
    candidate.search(queries[0], k)  # warm caches and lazy imports
    times = []
    started = time.perf_counter()
    for query in queries:
        t0 = time.perf_counter()
        candidate.search(query, k)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - started > budget_s:
            break
    latency = latency_ms(times)
    return {
        "queries": len(times),
        "of": len(queries),
        "p50_ms": latency["p50_ms"],
        "p95_ms": latency["p95_ms"],
    }


def build(candidate, folder: Path, texts: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    candidate.build(folder, list(range(1, len(texts) + 1)), texts)
    seconds = time.perf_counter() - started
    text_bytes = sum(len(t.encode("utf-8")) for t in texts)
    disk = candidate.disk_bytes()
    return {
        "documents": len(texts),
        "build_s": round(seconds, 2),
        "disk_bytes": disk,
        "text_bytes": text_bytes,
        "disk_over_text": round(disk / text_bytes, 3),
    }


def retrieval_quality(candidate, dataset, folder: Path, k: int) -> dict[str, Any]:
    from bench.metrics import evaluate_run

    texts = [document_text(d.title, d.text) for d in dataset.corpus]
    built = build(candidate, folder, texts)
    run = {}
    for query_id, query in dataset.queries.items():
        hits = candidate.search(query, k)
        run[query_id] = {dataset.corpus[i - 1].doc_id: float(s) for i, s in hits}
    metrics = evaluate_run(dataset.qrels, run)
    return {
        "build": built,
        "ndcg@10": metrics["ndcg@10"],
        "recall@100": metrics["recall@100"],
        "published_ndcg@10": PUBLISHED_NDCG10.get(dataset.name),
    }


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="Folder holding the BEIR folders scifact/ and nfcorpus/.",
)
@click.option(
    "--libraries",
    default=",".join(LIBRARIES),
    show_default=True,
    help="Comma-separated candidates: fts5, tantivy, bm25s.",
)
@click.option(
    "--documents",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=1000),
    help="Size of the synthetic corpus for the large-scale figures.",
)
@click.option("--short-queries", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--long-queries", default=100, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--budget",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds at most per latency measurement (fewer queries are timed past it).",
)
@click.option(
    "--fts5-terms",
    default=32,
    show_default=True,
    type=click.IntRange(min=1),
    help="FTS5: a query keeps at most this many terms, the rarest.",
)
@results_dir_option("results JSON")
@json_option()
@click.pass_context
def lexical(
    context: click.Context,
    data_dir: Path,
    libraries: str,
    documents: int,
    short_queries: int,
    long_queries: int,
    budget: float,
    fts5_terms: int,
    out: Path,
    as_json: bool,
) -> None:
    """Compare BM25 libraries for the lexical index: nDCG@10 on SciFact and NFCorpus,
    build time, disk and query latency at 5k (SciFact) and N synthetic documents.

    \b
    Examples:
      engine bench lexical --data-dir ../shared/data/beir --out bench/results
      engine bench lexical --data-dir ../shared/data/beir --libraries tantivy --documents 20000
    """
    from bench.common import command_line, machine, peak_rss_mb
    from bench.datasets import load_beir

    names = [n.strip() for n in libraries.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LIBRARIES))
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(unknown)}", param_hint="--libraries")
    datasets = [load_beir(data_dir / name) for name in ("scifact", "nfcorpus")]
    real = [(d.title, d.text) for ds in datasets for d in ds.corpus]
    all_queries = [q for ds in datasets for q in ds.queries.values()]
    scifact_texts = [document_text(d.title, d.text) for d in datasets[0].corpus]
    large_texts = synthetic_corpus(real, documents)
    query_sets = {
        "5k": {
            "short": pick_short_queries(list(datasets[0].queries.values()), short_queries),
            "long": pick_long_queries(scifact_texts, long_queries),
        },
        "large": {
            "short": pick_short_queries(all_queries, short_queries),
            "long": pick_long_queries([document_text(t, x) for t, x in real], long_queries, seed=1),
        },
    }
    results: dict[str, Any] = {}
    for name in names:
        entry: dict[str, Any] = {"quality": {}, "scale": {}}
        for dataset in datasets:
            with tempfile.TemporaryDirectory(prefix="engine-lexical-") as tmp:
                candidate = make_candidate(name, fts5_terms)
                entry["quality"][dataset.name] = retrieval_quality(
                    candidate, dataset, Path(tmp), k=100
                )
                del candidate
            if not as_json:
                q = entry["quality"][dataset.name]
                click.echo(f"{name} {dataset.name}: nDCG@10 {q['ndcg@10']:.4f}", err=True)
        for label, texts in (("5k", scifact_texts), ("large", large_texts)):
            with tempfile.TemporaryDirectory(prefix="engine-lexical-") as tmp:
                candidate = make_candidate(name, fts5_terms)
                built = build(candidate, Path(tmp), texts)
                row = {
                    **built,
                    "short": latency(candidate, query_sets[label]["short"], 10, budget),
                    "long": latency(candidate, query_sets[label]["long"], 10, budget),
                    "long_k100": latency(candidate, query_sets[label]["long"], 100, budget),
                }
                entry["scale"][label] = row
                del candidate
            if not as_json:
                click.echo(
                    f"{name} {len(texts)} docs: build {row['build_s']} s, disk "
                    f"{row['disk_over_text']}x text, short p50 {row['short']['p50_ms']} ms, "
                    f"long p50 {row['long']['p50_ms']} ms",
                    err=True,
                )
        results[name] = entry
    record = {
        "command": command_line(context),
        "machine": machine(),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "bm25": {"k1": 1.2, "b": 0.75},
        "synthetic_corpus": (
            f"{documents} documents from SciFact + NFCorpus text: a random document's title "
            "and first half of its words, then the second half of another random document's "
            "words (seed 0)"
        ),
        "short_queries": "the datasets' test queries of 3-10 words",
        "long_queries": f"{LONG_WORDS} consecutive words of the real corpus text",
        "published_ndcg@10": PUBLISHED_NDCG10,
        "versions": library_versions(),
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lexical-{documents // 1000}k.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    if not as_json:
        click.echo(f"wrote {path}", err=True)
    if as_json:
        click.echo(json.dumps(record))
    else:
        click.echo(summary_table(results))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"sqlite": sqlite3.sqlite_version}
    for package in ("tantivy", "bm25s", "PyStemmer"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def summary_table(results: dict[str, Any]) -> str:
    lines = [
        "| library | SciFact nDCG@10 | NFCorpus nDCG@10 | docs | build s | disk/text "
        "| short p50 ms | long p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in results.items():
        quality = entry["quality"]
        for row in entry["scale"].values():
            lines.append(
                f"| {name} | {quality['scifact']['ndcg@10']:.4f} | "
                f"{quality['nfcorpus']['ndcg@10']:.4f} | {row['documents']} | {row['build_s']} "
                f"| {row['disk_over_text']} | {row['short']['p50_ms']} | {row['long']['p50_ms']} |"
            )
    return "\n".join(lines)
