"""engine bench ann and engine bench memory on small sizes (real FAISS, real SQLite)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bench.ann import clustered_vectors, exact_top
from engine.app.cli import cli


def test_exact_top_matches_a_full_sort(tmp_path):
    base, queries = clustered_vectors(3000, 16, seed=1, work_dir=tmp_path)
    assert base.dtype == np.float16 and queries.shape == (1000, 16)
    found = exact_top(base, queries[:20], 10, chunk=700)
    scores = queries[:20].astype(np.float32) @ np.asarray(base, dtype=np.float32).T
    expected = np.argsort(-scores, axis=1)[:, :10]
    assert (np.sort(found, axis=1) == np.sort(expected, axis=1)).all()


def test_bench_ann_records_every_type_and_the_store_goals(tmp_path):
    runner = CliRunner()
    common = [
        "bench", "ann", "--synthetic", "3000", "--dim", "16", "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"), "--ef-search", "8,64", "--nprobe", "4,32",
    ]  # fmt: skip
    result = runner.invoke(cli, [*common, "--types", "flat,hnsw,ivf-pq", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_type = {entry["type"]: entry for entry in data["types"]}
    assert by_type["flat"]["points"][0]["recall@10"] == 1.0
    hnsw = [p["recall@10"] for p in by_type["hnsw"]["points"]]
    assert hnsw == sorted(hnsw) and hnsw[-1] >= 0.95  # more efSearch, more recall
    assert by_type["ivf-pq"]["factory"].startswith("IVF")
    assert "engine bench ann --synthetic 3000" in data["command"]
    stored = runner.invoke(cli, [*common, "--types", "hnsw", "--store", "--json"])
    assert stored.exit_code == 0, stored.output
    store = json.loads(stored.stdout)["store_hnsw"]
    assert store["documents"] == 3000 and store["recall@10"] >= 0.95
    assert len(store["cold_open_first_search_seconds"]) == 3 and store["disk_ratio"] > 1
    saved = json.loads((tmp_path / "out" / "ann-synthetic-3000x16.json").read_text())
    assert {e["type"] for e in saved["types"]} == {"flat", "hnsw", "ivf-pq"}  # merged, kept
    assert (tmp_path / "out" / "ann-synthetic-3000x16.png").stat().st_size > 0


def test_bench_memory_indexes_a_stream(tmp_path, tiny_bert_path):
    out = tmp_path / "memory.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "memory", "--model", str(tiny_bert_path), "--documents", "300", "--words",
         "20", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["encoded"] == 300
    # The high-water mark was reset before indexing, so the growth is the indexer's own, not
    # whatever this test session peaked at before: 300 short documents of a 32-dim model are a
    # few MB at most, with the model (and torch) loaded the process holds far more.
    assert figures["memory_kind"] == "rss"
    assert 0 <= figures["peak_rss_growth_mb"] < 64
    assert figures["peak_rss_mb_model_loaded"] > 100


@pytest.mark.slow
def test_bench_memory_measures_a_real_engine_index_of_a_folder(tmp_path, tiny_bert_path):
    out = tmp_path / "memory-folder.json"
    result = CliRunner().invoke(
        cli,
        ["bench", "memory", "--model", str(tiny_bert_path), "--corpus", "folder", "--documents",
         "200", "--words", "10", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert (figures["corpus"], figures["encoded"], figures["skipped"]) == ("folder", 200, 0)
    assert figures["peak_rss_mb"] >= figures["peak_rss_mb_one_document"] > 0
    assert figures["command"].startswith("engine bench memory")
    bad = CliRunner().invoke(
        cli, ["bench", "memory", "--model", str(tiny_bert_path), "--ranks", "2"]
    )
    assert bad.exit_code == 2 and "--corpus folder or jsonl" in bad.output
