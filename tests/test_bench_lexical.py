"""`engine bench lexical` end to end on two small BEIR folders where BM25 must be perfect."""

from __future__ import annotations

import json
import random

from click.testing import CliRunner

from bench.lexical import pick_long_queries, pick_short_queries, synthetic_corpus
from engine.app.cli import cli
from tests.test_bench_beir import write_beir

FILLER = "cell protein study patient effect result analysis method level gene".split()


def write_dataset(folder, seed: int):
    """30 documents of filler words, each with one rare word that one query asks for."""
    rng = random.Random(seed)
    rare = [f"marker{seed}x{i}" for i in range(30)]
    corpus = {
        f"d{i}": (f"title {i}", " ".join(rng.choices(FILLER, k=40) + [rare[i]])) for i in range(30)
    }
    queries = {f"q{i}": f"which study found {rare[i]} in cells" for i in range(30)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(30)}
    return write_beir(folder, corpus, queries, qrels)


def test_bench_lexical_records_quality_and_scale(tmp_path):
    write_dataset(tmp_path / "data" / "scifact", 1)
    write_dataset(tmp_path / "data" / "nfcorpus", 2)
    out = tmp_path / "results"
    result = CliRunner().invoke(
        cli,
        [
            "bench", "lexical", "--data-dir", str(tmp_path / "data"), "--documents", "1000",
            "--short-queries", "5", "--long-queries", "3", "--out", str(out), "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads((out / "lexical-1k.json").read_text())
    assert record == json.loads(result.output)
    assert set(record["results"]) == {"fts5", "tantivy", "bm25s"}
    for entry in record["results"].values():
        for dataset in ("scifact", "nfcorpus"):
            assert entry["quality"][dataset]["ndcg@10"] == 1.0
        assert entry["scale"]["5k"]["documents"] == 30
        large = entry["scale"]["large"]
        assert large["documents"] == 1000 and large["disk_bytes"] > 0
        assert large["short"]["queries"] == 5 and large["long"]["queries"] == 3
        assert 0 < large["short"]["p50_ms"] <= large["short"]["p95_ms"]


def test_query_and_corpus_makers():
    sources = [("t1", "a b c d"), ("t2", "e f g h")]
    docs = synthetic_corpus(sources, 50)
    assert len(docs) == 50 and len(set(docs)) <= 4  # 2 titles x 2 tails
    assert all(len(d.split()) == 5 for d in docs)  # title + 2 head words + 2 tail words
    assert pick_short_queries(["a b", "a b c", " ".join("x" * 11)], 5) == ["a b c"]
    long = pick_long_queries(["w"] * 500, 4)
    assert len(long) == 4 and all(len(q.split()) == 200 for q in long)
